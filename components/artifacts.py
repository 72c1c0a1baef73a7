"""Typed artifacts that flow between the custom components.

TYPE_NAMEs carry a `charrnn.` prefix: KFP v2 wants custom artifact types to be
namespaced, and the class must import inside the pipeline image (this package is
installed there).
"""

from tfx.types import artifact
from tfx.types.system_artifacts import Dataset

_INT = artifact.Property(type=artifact.PropertyType.INT)
_STRING = artifact.Property(type=artifact.PropertyType.STRING)


class Corpus(artifact.Artifact):
  """Normalised UTF-8 text in shards `corpus-NNNNN-of-MMMMM.txt` plus `index.json`.

  `index.json` lists each shard with its character count, so readers can work
  shard by shard without ever holding the whole text.
  """
  TYPE_NAME = 'charrnn.Corpus'
  TYPE_ANNOTATION = Dataset
  PROPERTIES = {
      'num_chars': _INT,
      'num_shards': _INT,
      'fingerprint': _STRING,   # sha256 of the normalised text
      'sources': _STRING,       # comma-separated, as given
  }


class Vocabulary(artifact.Artifact):
  """`vocabulary.json`: the token list, id 0 = `[UNK]`, then characters by code point."""
  TYPE_NAME = 'charrnn.Vocabulary'
  PROPERTIES = {
      'vocab_size': _INT,       # including [UNK]
      'fingerprint': _STRING,   # sha256 of the token list
  }
