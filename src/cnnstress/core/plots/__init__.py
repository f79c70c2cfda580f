"""Every figure of cnnstress, one module per family, drawn on one kind of canvas.

- :mod:`~cnnstress.core.plots.canvas`: the Agg figure, PNG files, RGB arrays for TensorBoard;
- :mod:`~cnnstress.core.plots.layout`: the panel grid of multi-panel figures;
- :mod:`~cnnstress.core.plots.images`: captioned image grids and CAM overlays (failures, Grad-CAM);
- :mod:`~cnnstress.core.plots.diagrams`: confusion matrices and reliability diagrams;
- :mod:`~cnnstress.report.figures.comparison`: the analysis' figures comparing groups of runs;
- :mod:`~cnnstress.report.figures.stress`: the stress tests' figures, per run and across groups.
"""
