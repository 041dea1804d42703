"""Ignite handlers and report writers."""

from monai_advseg.handlers.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    BestMetricState,
    RandomState,
    attach_resume,
)
from monai_advseg.handlers.robustness_report import (
    REPORT_FILES,
    RobustnessReportWriter,
    check_report_dir,
    load_robustness_report,
    plot_robustness,
    require_matplotlib,
    write_robustness_reports,
)

__all__ = [
    "REPORT_FILES",
    "RobustnessReportWriter",
    "check_report_dir",
    "load_robustness_report",
    "plot_robustness",
    "require_matplotlib",
    "write_robustness_reports",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestMetricState",
    "RandomState",
    "attach_resume",
]
