using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BlockRepl.Replication.Lz4;
using K4os.Compression.LZ4;

namespace BlockRepl.Benchmarks;

/// <summary>
/// LZ4 block compression of the sender's batches, A/B in one run: the native binding (<see cref="Lz4Codec"/>
/// over Debian's liblz4.so.1, LZ4_compress_default / LZ4_decompress_safe) against the managed K4os port
/// (LZ4Codec.Encode at L00_FAST / LZ4Codec.Decode), both into preallocated buffers. One operation compresses
/// (or decompresses) every batch of <see cref="Lz4Corpus"/>, the wire-ratio data set packed into 1 MiB
/// batches; each codec decompresses its own output. MB/s counts uncompressed bytes both ways; "LZ4 ratio"
/// is compressed / uncompressed bytes over the whole corpus (what the wire ratio is made of). The setup
/// checks that each codec decodes the other's blocks to the original bytes (the wire format is shared).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(Lz4Config))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class Lz4CodecBenchmarks
{
    private byte[][] _batches = [];
    private byte[][] _nativeCompressed = [];
    private int[] _nativeLengths = [];
    private byte[][] _managedCompressed = [];
    private int[] _managedLengths = [];
    private byte[] _output = [];

    [GlobalSetup]
    public void Setup()
    {
        var corpus = Lz4Corpus.Instance;
        Console.WriteLine($"// LZ4 corpus: {corpus.Batches.Length} batches, {corpus.TotalBytes} bytes: {corpus.Description}");
        _batches = corpus.Batches;
        _nativeCompressed = [.. _batches.Select(b => new byte[Lz4Codec.MaxCompressedLength(b.Length)])];
        _managedCompressed = [.. _batches.Select(b => new byte[LZ4Codec.MaximumOutputSize(b.Length)])];
        _nativeLengths = new int[_batches.Length];
        _managedLengths = new int[_batches.Length];
        _output = new byte[_batches.Max(b => b.Length)];
        var nativeTotal = NativeCompress();
        var managedTotal = ManagedCompress();
        var identical = Enumerable.Range(0, _batches.Length).Count(i =>
            _nativeCompressed[i].AsSpan(0, _nativeLengths[i]).SequenceEqual(_managedCompressed[i].AsSpan(0, _managedLengths[i])));
        Console.WriteLine($"// LZ4 compressed: liblz4 {nativeTotal} bytes, K4os {managedTotal} bytes; byte-identical blocks: {identical} of {_batches.Length}");

        for (var i = 0; i < _batches.Length; i++)
        {
            var batch = _batches[i];
            var fromNative = _output.AsSpan(0, LZ4Codec.Decode(_nativeCompressed[i].AsSpan(0, _nativeLengths[i]), _output));
            if (!fromNative.SequenceEqual(batch))
            {
                throw new InvalidOperationException($"batch {i}: K4os does not decode liblz4's block to the input");
            }

            var fromManaged = _output.AsSpan(0, Lz4Codec.Decompress(_managedCompressed[i].AsSpan(0, _managedLengths[i]), _output));
            if (!fromManaged.SequenceEqual(batch))
            {
                throw new InvalidOperationException($"batch {i}: liblz4 does not decode K4os's block to the input");
            }
        }
    }

    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Compress")]
    public long NativeCompress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            total += _nativeLengths[i] = Lz4Codec.Compress(_batches[i], _nativeCompressed[i]);
        }

        return total;
    }

    [Benchmark]
    [BenchmarkCategory("Compress")]
    public long ManagedCompress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            total += _managedLengths[i] = EncodeManaged(_batches[i], _managedCompressed[i]);
        }

        return total;
    }

    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Decompress")]
    public long NativeDecompress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            total += Lz4Codec.Decompress(_nativeCompressed[i].AsSpan(0, _nativeLengths[i]), _output);
        }

        return total;
    }

    [Benchmark]
    [BenchmarkCategory("Decompress")]
    public long ManagedDecompress()
    {
        long total = 0;
        for (var i = 0; i < _batches.Length; i++)
        {
            var written = LZ4Codec.Decode(_managedCompressed[i].AsSpan(0, _managedLengths[i]), _output);
            total += written >= 0 ? written : throw new InvalidOperationException($"batch {i}: K4os could not decode its own block");
        }

        return total;
    }

    /// <summary>Compressed / uncompressed bytes of the whole corpus with each codec (the host computes it).</summary>
    internal static double CompressionRatio(bool managed)
    {
        var corpus = Lz4Corpus.Instance;
        long compressed = 0;
        foreach (var batch in corpus.Batches)
        {
            var destination = new byte[LZ4Codec.MaximumOutputSize(batch.Length)];
            compressed += managed ? EncodeManaged(batch, destination) : Lz4Codec.Compress(batch, destination);
        }

        return (double)compressed / corpus.TotalBytes;
    }

    private static int EncodeManaged(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var length = LZ4Codec.Encode(source, destination, LZ4Level.L00_FAST);
        return length > 0 ? length : throw new InvalidOperationException("K4os: destination too small");
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

    /// <summary>Compressed / uncompressed bytes over the corpus, for the codec the row measures.</summary>
    private sealed class RatioOfCorpusColumn : IColumn
    {
        private static readonly Lazy<double> Native = new(() => CompressionRatio(managed: false));
        private static readonly Lazy<double> Managed = new(() => CompressionRatio(managed: true));

        public string Id => nameof(RatioOfCorpusColumn);
        public string ColumnName => "LZ4 ratio";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Compressed / uncompressed bytes of the whole corpus with this row's codec";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) =>
            GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var name = benchmarkCase.Descriptor.WorkloadMethod.Name;
            var ratio = name.StartsWith("Managed", StringComparison.Ordinal) ? Managed.Value : Native.Value;
            return ratio.ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
        }

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => true;
    }
}
