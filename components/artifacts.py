"""Typed artifacts that flow between the custom components.

TYPE_NAMEs are `charrnn.<Class>`: KFP v2 wants custom artifact types namespaced,
and its container entrypoint rebuilds an artifact by importing the class its
type name names, so the top-level `charrnn` package re-exports these classes.
Figures live in custom properties (TFX's KFP v2 compiler rejects custom types
that declare PROPERTIES):

  Corpus      num_chars, num_shards, fingerprint (sha256 of the text), sources
  Vocabulary  vocab_size (including [UNK]), fingerprint (sha256 of the tokens)
"""

from tfx.types import artifact
from tfx.types.system_artifacts import Dataset


class Corpus(artifact.Artifact):
  """Normalised UTF-8 text in shards `corpus-NNNNN-of-MMMMM.txt` plus `index.json`.

  `index.json` lists each shard with its character count, so readers can work
  shard by shard without ever holding the whole text.
  """
  TYPE_NAME = 'charrnn.Corpus'
  TYPE_ANNOTATION = Dataset


class Vocabulary(artifact.Artifact):
  """`vocabulary.json`: the token list, id 0 = `[UNK]`, then characters by code point."""
  TYPE_NAME = 'charrnn.Vocabulary'
