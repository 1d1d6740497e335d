"""The notebook wing: the ``%%durable`` magics, the cell rewrite and its state, the panels,
the headless runner and the pytest plugin. Only this wing talks to IPython and ipywidgets."""
