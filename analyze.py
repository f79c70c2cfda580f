"""Compare finished runs: `python analyze.py sweep=outputs/multiruns/<date>/<time>` or
`python analyze.py runs=[RUN_DIR,RUN_DIR]`; writes a report into its own output directory."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnstress.errors import exit_on_user_error
from cnnstress.overrides import check_analysis_output, check_group_choices
from cnnstress.resolvers import register_resolvers

os.environ.setdefault("CNNSTRESS_ROOT", str(Path(__file__).resolve().parent))
register_resolvers()  # at import: DDP and SLURM jobs import this file too


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Read the runs, compare them, and print where the report is."""
    from cnnstress.analysis import analyze

    out = exit_on_user_error(analyze, cfg)
    print(f"cnnstress: report in {out / 'report.html'}")


if __name__ == "__main__":
    exit_on_user_error(check_group_choices, sys.argv[1:])
    exit_on_user_error(check_analysis_output, sys.argv[1:])
    main()
