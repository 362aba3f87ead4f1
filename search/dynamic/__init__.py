"""Dynamic routing, in one place: the released settings (A/B/C/raw), the budget loss in its two modes,
edge frequencies of a trained net's routes and Common-X extraction. Importing this package imports
nothing heavy; the modules import torch where they need it."""
