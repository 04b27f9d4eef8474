"""Stage two: projection heads, fusion transformer and training strategies, from the cache."""
