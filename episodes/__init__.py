"""episodes: few-shot datasets (Omniglot, miniImageNet, image folders) and the episodic N-way K-shot sampler."""
