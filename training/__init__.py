"""The offline package: synthetic categories, fitting, network training, bundle building."""
