"""One driver per notebook, and what they share.

``assembly`` (01), ``embeddings`` (02), ``training`` (03), ``baselines`` (04), ``figures`` (05);
``common`` (the stage inputs every later stage opens, run results), ``runner`` (notebooks
through papermill).
"""
