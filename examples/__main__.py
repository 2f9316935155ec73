"""`make demo`: the naive formulas going NaN beside safeops, then the seeds' stories."""

from examples import edge_table


def main() -> None:
    edge_table.main()


if __name__ == "__main__":
    main()
