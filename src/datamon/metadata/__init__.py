"""Metadata: the store's config, repos, bundles, Merkle trees and refs."""
