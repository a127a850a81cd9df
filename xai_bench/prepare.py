"""Prepare a dataset: its official download -> the canonical layout xai_bench trains on.

    python -m xai_bench.prepare --help                   # the datasets
    python -m xai_bench.prepare kvasir --help            # one dataset's options
    python -m xai_bench.prepare kvasir --raw kvasir-dataset-v2 --out data/kvasir

One sub-command per dataset of `xai_bench.data.prepare.DATASETS`; each module contributes its
options and its prepare function (its `Preparer`), the options every dataset shares come from
`add_common_args`. A user-fixable error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging

from xai_bench.data.prepare import DATASETS, PrepareReport, add_common_args, preparer
from xai_bench.utils.errors import XaiBenchError


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per dataset, with the common options and its own."""
    parser = argparse.ArgumentParser(
        prog="python -m xai_bench.prepare",
        description="Prepare a dataset's official download for xai_bench (docs/datasets/).",
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                                     title="datasets (python -m xai_bench.prepare DATASET --help)")
    for name in DATASETS:
        spec = preparer(name)
        summary = spec.doc.splitlines()[0] if spec.doc else None
        sub = datasets.add_parser(name, help=summary, description=summary)
        add_common_args(sub, spec.default_resize, name if spec.study_rois else None)
        if spec.add_arguments is not None:
            spec.add_arguments(sub)
        sub.set_defaults(prepare=spec.prepare)
    return parser


def run(argv: list[str] | None = None) -> PrepareReport:
    """Parse `argv` (`<dataset> --raw ... --out ...`) and prepare that dataset; errors raise."""
    args = build_parser().parse_args(argv)
    return args.prepare(args)


def main(argv: list[str] | None = None) -> int:
    """The command: a user-fixable error (XaiBenchError) is one message and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = run(argv)
    except XaiBenchError as err:
        print(f"error: {err}")
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
