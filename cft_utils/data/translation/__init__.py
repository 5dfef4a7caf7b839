"""Selective translation of English instruction data (OpenOrca -> mOpenOrca, paper App. A.2).

The paper translated a 50k-record OpenOrca subset into the eleven MultiAlpaca languages "selectively": prose is
translated, while code, math, URLs, e-mail addresses, numbers with units, template variables and JSON/markup stay
verbatim. One idea per module, in the order the data flows:

- ``spans``: mask protected spans with placeholders and put them back, failing loudly when one was lost;
- ``segment``: cut masked text into pieces that fit a backend's token budget;
- ``translators``: the backends behind one interface (sandbox lexicon, transformers, OpenAI-compatible);
- ``pipeline``: protect, segment, translate and restore texts and records;
- ``build`` (with ``layout``): the seeded, sharded, resumable build and its ``datasets`` dataset on disk;
- ``quality``: the per-language quality report (span survival, length ratios, language identification).

Example (paper profile, on a GPU machine)::

    from cft_utils.data.translation.build import build_translated_dataset
    from cft_utils.data.translation.translators import TransformersTranslator
    from cft_utils.languages import MULTIALPACA_LANGUAGES

    tr = TransformersTranslator("facebook/nllb-200-distilled-600M", batch_size=32)
    build_translated_dataset(openorca_records, MULTIALPACA_LANGUAGES, tr, out_dir, n=50_000, seed=0)
"""
