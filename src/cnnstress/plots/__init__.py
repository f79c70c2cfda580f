"""Every figure of cnnstress, one module per family, drawn on one kind of canvas.

- :mod:`~cnnstress.plots.canvas`: the Agg figure, PNG files, RGB arrays for TensorBoard;
- :mod:`~cnnstress.plots.layout`: the panel grid of multi-panel figures;
- :mod:`~cnnstress.plots.images`: captioned image grids and CAM overlays (failures, Grad-CAM);
- :mod:`~cnnstress.plots.calibration`: confusion matrices and reliability diagrams;
- :mod:`~cnnstress.plots.comparison`: the analysis' figures comparing groups of runs;
- :mod:`~cnnstress.plots.stress`: the stress tests' figures, per run and across groups.
"""
