"""Figures of ddpmkit as pure functions: tensors/arrays/paths in, PNG/GIF files out.

``viz.grid`` needs only numpy and Pillow (it runs inside the training loop); the other modules
draw with matplotlib's object-oriented API on the Agg canvas (no display, no pyplot state).
matplotlib and Pillow are imported only when a function runs.
"""

from ddpmkit.viz.forward import plot_forward_2d, plot_forward_process
from ddpmkit.viz.grid import (
    atomic_save,
    atomic_write_bytes,
    grid_with_row_labels,
    make_grid,
    save_grid,
    save_images,
    to_uint8,
)
from ddpmkit.viz.scatter import plot_data_vs_samples
from ddpmkit.viz.schedules import plot_schedules
from ddpmkit.viz.training import contact_sheet, ema_smooth, plot_loss_curve, read_metrics
from ddpmkit.viz.trajectory import (
    Snapshot,
    TrajectoryRecorder,
    plot_reverse_process,
    save_reverse_gif,
)

__all__ = [
    "Snapshot",
    "TrajectoryRecorder",
    "atomic_save",
    "atomic_write_bytes",
    "contact_sheet",
    "ema_smooth",
    "grid_with_row_labels",
    "make_grid",
    "plot_data_vs_samples",
    "plot_forward_2d",
    "plot_forward_process",
    "plot_loss_curve",
    "plot_reverse_process",
    "plot_schedules",
    "read_metrics",
    "save_grid",
    "save_images",
    "save_reverse_gif",
    "to_uint8",
]
