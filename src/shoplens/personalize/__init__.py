"""Personalization: customer events, simulated customers, recommenders and their evaluation.

- :mod:`~shoplens.personalize.types`: events, item space, histories, the recommender protocol
- :mod:`~shoplens.personalize.events`: the events store (SQLite, WAL), validation and import
- :mod:`~shoplens.personalize.loaders`: H&M and RetailRocket public-format loaders
- :mod:`~shoplens.personalize.simulate`: the seeded customer simulator (output is *simulated*)
- :mod:`~shoplens.personalize.baselines`: popularity, item-kNN (co-visitation, image), ALS
- :mod:`~shoplens.personalize.customer`: customer embeddings pooled from content embeddings
- :mod:`~shoplens.personalize.sequential`: a learned sequential customer model (SASRec-style)
- :mod:`~shoplens.personalize.ranker`: multi-retriever candidates + learned fused ranker
- :mod:`~shoplens.personalize.complete_look`: compatible products from other categories
- :mod:`~shoplens.personalize.evaluate`: temporal split, ranking metrics, cold-start slice
"""
