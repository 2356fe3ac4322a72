"""Query encoding, fusion, filters and near-duplicate detection."""
