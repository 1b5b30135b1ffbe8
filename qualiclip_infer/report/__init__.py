"""HTML reports of scored collections: a static page that opens from disk, with a summary, a histogram, a gallery
sorted worst first, the failed inputs, quality maps over the large view and, for evaluations, the scatter against
the MOS and the largest disagreements.

Example:
    from qualiclip_infer.report import build_report, read_rows

    build_report(read_rows("scores.csv"), "report.html")
"""

from .page import ReportResult, build_report, files_folder
from .rows import ReportInputError, ReportRow, RowCollector, read_rows, rows_from_results

__all__ = ["ReportInputError", "ReportResult", "ReportRow", "RowCollector", "build_report", "files_folder",
           "read_rows", "rows_from_results"]
