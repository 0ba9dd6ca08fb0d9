"""Balanced k-means partitioning (`balanced`), built on blocked distances (`blocks`), Lloyd's k-means
(`lloyd`) and an exact size repair (`repair`). Build-time only (design/algorithm.md section 4); imports only
NumPy."""

from squash.partition.balanced import Partitioning, balanced_kmeans, default_partitions
from squash.partition.blocks import assign_to_centroids
from squash.partition.lloyd import kmeans

__all__ = ["Partitioning", "assign_to_centroids", "balanced_kmeans", "default_partitions", "kmeans"]
