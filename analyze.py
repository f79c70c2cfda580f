"""Compare finished runs: `python analyze.py sweep=outputs/multiruns/<date>/<time>` or
`python analyze.py runs=[RUN_DIR,RUN_DIR]`; writes a report into its own output directory."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnstress.app.configs import main_precheck, register_configs
from cnnstress.core.errors import exit_on_user_error

os.environ.setdefault("CNNSTRESS_ROOT", str(Path(__file__).resolve().parent))
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Read the runs, compare them, and print where the report is."""
    from cnnstress.app.analyze import analyze

    out = exit_on_user_error(analyze, cfg)
    print(f"cnnstress: report in {out / 'report.html'}")


if __name__ == "__main__":
    main_precheck("analyze")
    main()
