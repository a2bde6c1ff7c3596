"""The papers' machinery: superpixels and their graph, the Graph LSTM layer and its update orders, merge
probabilities, the partition energy, the Metropolis-Hastings sampler and one evolving step. Nothing here
knows about training, losses or datasets."""
