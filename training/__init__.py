"""Everything that makes a model: data, network, augmentation, fitting, baselines, export."""
