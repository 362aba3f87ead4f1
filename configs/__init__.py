"""Bundled `routespace train` configs (YAML package data): the paper's Dynamic-A/B/C and Dynamic-Raw at the
paper preset on Cityscapes. ``routespace train --config paper-dynamic-A --data cityscapes:PATH --out RUN``;
``routespace config show NAME`` prints one to copy and edit."""
