"""Ignite handlers, report writers and checks that an earlier run's outputs are not replaced silently."""

from monai_advseg.handlers.certification_gallery import CertificationGalleryCollector
from monai_advseg.handlers.certification_report import (
    CERTIFY_FILES,
    CertificationReportWriter,
    build_certification_report,
    certification_check,
    check_certify_dir,
    load_certification_report,
    plot_certification,
    plot_certified_gallery,
    write_certification_reports,
)
from monai_advseg.handlers.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    BestMetricState,
    RandomState,
    attach_resume,
    check_checkpoint_files,
    save_atomically,
)
from monai_advseg.handlers.diagnostics import DIAGNOSTICS, build_diagnostics, diagnostics_verdict
from monai_advseg.handlers.outputs import check_new_files, metrics_saver_files, saved_image_files
from monai_advseg.handlers.report_card import centre_slice, plot_gallery, report_markdown, report_verdict
from monai_advseg.handlers.report_files import ReportWriter
from monai_advseg.handlers.robustness_gallery import (
    GALLERY_CASES,
    RobustnessGalleryCollector,
    gallery_levels,
)
from monai_advseg.handlers.robustness_report import (
    REPORT_FILES,
    RobustnessReportWriter,
    build_robustness_report,
    check_report_dir,
    load_robustness_report,
    plot_robustness,
    require_matplotlib,
    state_metrics,
    write_robustness_reports,
)
from monai_advseg.handlers.safe_load import (
    WeightsOnlyCheckpointLoader,
    load_network_weights,
    load_weights_only,
    pickled_checkpoint_error,
)
from monai_advseg.handlers.sweep_progress import CertificationProgressBar, SweepProgressBar

__all__ = [
    "CERTIFY_FILES",
    "DIAGNOSTICS",
    "GALLERY_CASES",
    "REPORT_FILES",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestMetricState",
    "CertificationGalleryCollector",
    "CertificationProgressBar",
    "CertificationReportWriter",
    "RandomState",
    "ReportWriter",
    "RobustnessGalleryCollector",
    "RobustnessReportWriter",
    "SweepProgressBar",
    "WeightsOnlyCheckpointLoader",
    "attach_resume",
    "build_certification_report",
    "build_diagnostics",
    "build_robustness_report",
    "centre_slice",
    "certification_check",
    "check_certify_dir",
    "check_checkpoint_files",
    "check_new_files",
    "check_report_dir",
    "diagnostics_verdict",
    "gallery_levels",
    "load_certification_report",
    "load_network_weights",
    "load_robustness_report",
    "load_weights_only",
    "metrics_saver_files",
    "pickled_checkpoint_error",
    "plot_certification",
    "plot_certified_gallery",
    "plot_gallery",
    "plot_robustness",
    "report_markdown",
    "report_verdict",
    "require_matplotlib",
    "save_atomically",
    "saved_image_files",
    "state_metrics",
    "write_certification_reports",
    "write_robustness_reports",
]
