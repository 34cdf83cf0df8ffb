using BlockRepl.Core.Journal;

namespace BlockRepl.Benchmarks;

/// <summary>
/// Replication batches made from the wire-ratio data set of <c>bench/repl-bench.sh</c> (its WIRE step): regular
/// files of /usr/lib/x86_64-linux-gnu, /usr/bin, /usr/share/doc and the python3 standard library, each root's
/// files in sorted path order, a file taken only while it fits that root's share of the budget. With a smaller
/// budget than the script's 400 MiB the selection is a prefix of the script's, root by root.
/// <para>
/// The files are laid end to end, each starting on a 4 KiB boundary (as ext4 places data blocks; the tail of
/// a file's last block is zero), cut into 256 KiB writes (nbdcopy's default request size) and packed by
/// <see cref="JournalBatchWriter"/> the way the sender packs them: records are appended until the batch holds
/// at least 1 MiB (ReplicationSettings.SoftBatchBytes). So the bytes are exactly what the sender hands LZ4,
/// headers included; ext4's own metadata blocks are not in it.
/// </para>
/// Deterministic on one machine; the host process builds it too (for the MB/s and ratio columns).
/// </summary>
internal sealed class Lz4Corpus
{
    /// <summary>Data-set size in MiB: <c>LZ4_CORPUS_MIB</c>, default 32 (8 MiB per root).</summary>
    public static readonly int MiB = int.TryParse(Environment.GetEnvironmentVariable("LZ4_CORPUS_MIB"), out var mib) && mib > 0 ? mib : 32;

    private const int BlockSize = 4096;
    private const int WriteSize = 256 * 1024;
    private const int SoftBatchBytes = 1024 * 1024;

    private static readonly Lazy<Lz4Corpus> Shared = new(Build);

    private Lz4Corpus(byte[][] batches, string description)
    {
        Batches = batches;
        Description = description;
        TotalBytes = batches.Sum(b => (long)b.Length);
    }

    public static Lz4Corpus Instance => Shared.Value;

    /// <summary>The packed batches, each as the sender would hand it to LZ4.</summary>
    public byte[][] Batches { get; }

    /// <summary>Sum of the batch lengths: the uncompressed bytes one benchmark operation processes.</summary>
    public long TotalBytes { get; }

    /// <summary>Which files went in, per root.</summary>
    public string Description { get; }

    private static Lz4Corpus Build()
    {
        var roots = new[] { "/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share/doc", PythonStdlib() };
        var budget = (long)MiB * 1024 * 1024 / roots.Length;
        var image = new MemoryStream();
        var parts = new List<string>();
        foreach (var root in roots)
        {
            if (!Directory.Exists(root))
            {
                parts.Add($"{root} (missing)");
                continue;
            }

            long used = 0;
            var count = 0;
            foreach (var (path, size) in Files(root))
            {
                if (used + size > budget)
                {
                    continue;
                }

                byte[] data;
                try
                {
                    data = File.ReadAllBytes(path);
                }
                catch (UnauthorizedAccessException)
                {
                    continue; // repl-bench.sh skips files it may not read (os.access R_OK)
                }

                image.Write(data);
                image.SetLength(AlignUp(image.Length));
                image.Position = image.Length;
                used += size;
                count++;
            }

            parts.Add($"{root} {count} files {used / 1048576.0:F1} MiB");
        }

        if (image.Length == 0)
        {
            throw new InvalidOperationException("the LZ4 corpus is empty: none of its roots exists here");
        }

        return new Lz4Corpus(Pack(image.GetBuffer().AsSpan(0, (int)image.Length)), string.Join("; ", parts));
    }

    /// <summary>Regular, non-symlink files under <paramref name="root"/>, sorted by path (ordinal, as Python sorts).</summary>
    private static List<(string Path, long Size)> Files(string root)
    {
        var options = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = FileAttributes.ReparsePoint };
        var files = new List<(string, long)>();
        foreach (var path in Directory.EnumerateFiles(root, "*", options))
        {
            var info = new FileInfo(path);
            if (info.LinkTarget is null)
            {
                files.Add((path, info.Length));
            }
        }

        files.Sort((a, b) => string.CompareOrdinal(a.Item1, b.Item1));
        return files;
    }

    private static byte[][] Pack(ReadOnlySpan<byte> image)
    {
        var batches = new List<byte[]>();
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        ulong seq = 1;
        for (var offset = 0; offset < image.Length; offset += WriteSize)
        {
            var payload = image.Slice(offset, Math.Min(WriteSize, image.Length - offset));
            if (!writer.TryAppend(JournalRecordHeader.ForWrite(seq++, (ulong)offset, payload.Length), payload))
            {
                throw new InvalidOperationException("a 256 KiB record did not fit a batch");
            }

            if (writer.UncompressedLength >= SoftBatchBytes)
            {
                batches.Add(writer.Packed.ToArray());
                writer.Reset();
            }
        }

        if (writer.UncompressedLength > 0)
        {
            batches.Add(writer.Packed.ToArray());
        }

        return [.. batches];
    }

    private static long AlignUp(long length) => (length + BlockSize - 1) / BlockSize * BlockSize;

    /// <summary>The newest /usr/lib/python3.N (Debian 12: python3.11), the standard library repl-bench.sh takes.</summary>
    private static string PythonStdlib() =>
        Directory.Exists("/usr/lib")
            ? Directory.EnumerateDirectories("/usr/lib", "python3.*")
                .Where(d => File.Exists(Path.Combine(d, "os.py")))
                .OrderBy(d => Version.TryParse(Path.GetFileName(d)["python".Length..], out var v) ? v : new Version(0, 0))
                .LastOrDefault() ?? "/usr/lib/python3"
            : "/usr/lib/python3";
}
