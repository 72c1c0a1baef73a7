"""bench.windowing: CorpusIngest + WindowGen throughput and peak memory on a large corpus."""
