"""Model code: classical and neural attribute classifiers, Deep Embedded Clustering."""
