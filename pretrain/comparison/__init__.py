"""``pretrain compare``: the size / speed / quality table of the five encoder families
(``results/model_comparison.md``): ``shapes`` composes each model's shape from its recipe,
``measure`` counts, saves and times it, ``scores`` reads finished fine-tuning jobs and
re-scores their weights in int8, ``report`` writes the table."""
