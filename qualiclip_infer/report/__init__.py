"""HTML reports of scored collections: a static page that opens from disk, with a summary, a histogram, a gallery
sorted worst first, the failed inputs, quality maps over the large view and, for evaluations, the scatter against
the MOS and the largest disagreements.

Example::

    from qualiclip_infer.report import build_report, read_rows

    build_report(read_rows("scores.csv"), "report.html")
"""

from .page import ReportResult, build_report, files_folder
from .publish import ReportError, map_files, publish_report
from .rows import ReportRow, RowCollector, read_rows, rows_from_results

__all__ = ["ReportError", "ReportResult", "ReportRow", "RowCollector", "build_report",
           "files_folder", "map_files", "publish_report", "read_rows", "rows_from_results"]
