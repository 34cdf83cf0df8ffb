using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BlockRepl.Replication.Lz4;

namespace BlockRepl.Benchmarks;

/// <summary>
/// LZ4 block compression of the sender's batches through <see cref="Lz4Codec"/> (K4os.Compression.LZ4,
/// LZ4Codec.Encode at L00_FAST / LZ4Codec.Decode) into preallocated buffers. One operation compresses (or
/// decompresses) every batch of <see cref="Lz4Corpus"/>, the wire-ratio data set packed into 1 MiB batches.
/// MB/s counts uncompressed bytes both ways; "LZ4 ratio" is compressed / uncompressed bytes over the whole
/// corpus (what the wire ratio is made of).
/// <para>
/// The A/B against the earlier native binding (Debian's liblz4.so.1 through P/Invoke) is in commit 7d24868,
/// the last one with both: check it out and run this class there. Its numbers are in that commit's message.
/// </para>
/// </summary>
[MemoryDiagnoser]
[Config(typeof(Lz4Config))]
public class Lz4CodecBenchmarks
{
    private byte[][] _batches = [];
    private byte[][] _compressed = [];
    private int[] _lengths = [];
    private byte[] _output = [];

    [GlobalSetup]
    public void Setup()
    {
        var corpus = Lz4Corpus.Instance;
        Console.WriteLine($"// LZ4 corpus: {corpus.Batches.Length} batches, {corpus.TotalBytes} bytes: {corpus.Description}");
        _batches = corpus.Batches;
        _compressed = [.. _batches.Select(b => new byte[Lz4Codec.MaxCompressedLength(b.Length)])];
        _lengths = new int[_batches.Length];
        _output = new byte[_batches.Max(b => b.Length)];
        Compress();
        for (var i = 0; i < _batches.Length; i++)
        {
            var written = Lz4Codec.Decompress(_compressed[i].AsSpan(0, _lengths[i]), _output);
            if (!_output.AsSpan(0, written).SequenceEqual(_batches[i]))
            {
                throw new InvalidOperationException($"batch {i} does not decompress to its input");
            }
        }
    }

    [Benchmark]
    public long Compress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            total += _lengths[i] = Lz4Codec.Compress(_batches[i], _compressed[i]);
        }

        return total;
    }

    [Benchmark]
    public long Decompress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            total += Lz4Codec.Decompress(_compressed[i].AsSpan(0, _lengths[i]), _output);
        }

        return total;
    }

    /// <summary>Compressed / uncompressed bytes of the whole corpus (the host computes it).</summary>
    internal static double CompressionRatio()
    {
        var corpus = Lz4Corpus.Instance;
        long compressed = 0;
        foreach (var batch in corpus.Batches)
        {
            compressed += Lz4Codec.Compress(batch, new byte[Lz4Codec.MaxCompressedLength(batch.Length)]);
        }

        return (double)compressed / corpus.TotalBytes;
    }

    /// <summary>Adds the MB/s and ratio columns.</summary>
    private sealed class Lz4Config : ManualConfig
    {
        public Lz4Config()
        {
            AddColumn(new ThroughputColumn(), new RatioOfCorpusColumn());
        }
    }

    /// <summary>Uncompressed megabytes (10^6) of the corpus per second, from the median time per operation.</summary>
    private sealed class ThroughputColumn : IColumn
    {
        public string Id => nameof(ThroughputColumn);
        public string ColumnName => "MB/s";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Uncompressed MB (10^6 bytes) of the corpus per second, from the median";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) =>
            GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) =>
            summary[benchmarkCase]?.ResultStatistics is { } stats
                ? (Lz4Corpus.Instance.TotalBytes / (stats.Median / 1e9) / 1e6).ToString("N0", System.Globalization.CultureInfo.InvariantCulture)
                : "-";

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => true;
    }

    /// <summary>Compressed / uncompressed bytes over the corpus.</summary>
    private sealed class RatioOfCorpusColumn : IColumn
    {
        private static readonly Lazy<double> Ratio = new(CompressionRatio);

        public string Id => nameof(RatioOfCorpusColumn);
        public string ColumnName => "LZ4 ratio";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Compressed / uncompressed bytes of the whole corpus";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) =>
            GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) =>
            Ratio.Value.ToString("F4", System.Globalization.CultureInfo.InvariantCulture);

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => true;
    }
}
