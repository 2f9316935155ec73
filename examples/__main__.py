"""`make demo`: the naive formulas going NaN beside safeops, then the seeds' stories.

1. edge_table: naive TensorFlow against safeops on edge inputs, value and gradient;
2. digits_nan: a softmax classifier with a hand-written log loss at a high
   learning rate goes NaN; the safeops drop-in keeps training;
3. digits_lint: safeops.debug finds that loss statically (lint) and at run
   time (locate_nonfinite), and NaNGuard stops with a diagnosis;
4. breast_cancer_guard: unnormalised features and a high learning rate;
   NaNGuard recovers, doctor recommends standardising on the training split.
"""

from examples import breast_cancer_guard, digits_lint, digits_nan, edge_table


def _banner(title: str) -> None:
    print("\n" + "=" * 78 + f"\n{title}\n" + "=" * 78)


def main() -> None:
    _banner("1. Edge inputs: naive TensorFlow against safeops")
    edge_table.main()
    _banner("2. Digits: a hand-written log loss goes NaN; the safeops drop-in does not")
    digits_nan.main()
    _banner("3. Digits: safeops.debug finds where the NaN comes from")
    digits_lint.main()
    _banner("4. Breast cancer: unnormalised features; NaNGuard recovers, doctor explains")
    breast_cancer_guard.main()


if __name__ == "__main__":
    main()
