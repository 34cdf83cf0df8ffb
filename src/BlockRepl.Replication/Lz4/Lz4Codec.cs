using System.Runtime.InteropServices;

namespace BlockRepl.Replication.Lz4;

/// <summary>
/// LZ4 block compression (the block format, not the frame format) through the reference C library,
/// <c>liblz4.so.1</c> from the Debian package liblz4-1. Batches of journal records are compressed as one
/// block; the receiver knows the uncompressed length from the batch header and decompresses into a buffer
/// of exactly that size. Span-based and allocation-free.
/// </summary>
internal static partial class Lz4Codec
{
    /// <summary>LZ4_MAX_INPUT_SIZE of lz4.h: the largest input one block may hold.</summary>
    public const int MaxInputSize = 0x7E000000;

    private const string LibraryName = "liblz4.so.1";

    private static readonly Lazy<string?> LoadError = new(ProbeLibrary);

    /// <summary>True when liblz4.so.1 can be loaded.</summary>
    public static bool IsAvailable => LoadError.Value is null;

    /// <summary>The largest compressed size of <paramref name="inputLength"/> bytes (LZ4_compressBound).</summary>
    public static int MaxCompressedLength(int inputLength)
    {
        CheckInputLength(inputLength);
        EnsureAvailable();
        return LZ4_compressBound(inputLength);
    }

    /// <summary>
    /// Compresses <paramref name="source"/> into <paramref name="destination"/>; returns the compressed
    /// length. A destination of <see cref="MaxCompressedLength"/> bytes always suffices.
    /// </summary>
    /// <exception cref="ArgumentException">The destination is too small for this input.</exception>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (!TryCompress(source, destination, out var written))
        {
            throw new ArgumentException(
                $"destination of {destination.Length} bytes is too small for {source.Length} input bytes (use MaxCompressedLength)",
                nameof(destination));
        }

        return written;
    }

    /// <summary>Compresses; false when <paramref name="destination"/> is too small.</summary>
    public static unsafe bool TryCompress(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        CheckInputLength(source.Length);
        EnsureAvailable();
        fixed (byte* src = source)
        fixed (byte* dst = destination)
        {
            written = LZ4_compress_default(src, dst, source.Length, destination.Length);
        }

        return written > 0;
    }

    /// <summary>
    /// Decompresses one block into <paramref name="destination"/>; returns the decompressed length.
    /// liblz4's safe decoder never reads or writes outside the two spans, whatever the input.
    /// </summary>
    /// <exception cref="InvalidDataException">The input is not a valid block, or does not fit in the destination.</exception>
    public static int Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (!TryDecompress(source, destination, out var written))
        {
            throw new InvalidDataException(
                $"LZ4 block of {source.Length} bytes is corrupt or decompresses to more than {destination.Length} bytes");
        }

        return written;
    }

    /// <summary>Decompresses; false for a corrupt block or one that does not fit.</summary>
    public static unsafe bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        EnsureAvailable();
        if (source.IsEmpty)
        {
            written = 0;
            return false;
        }

        fixed (byte* src = source)
        fixed (byte* dst = destination)
        {
            var result = LZ4_decompress_safe(src, dst, source.Length, destination.Length);
            written = Math.Max(result, 0);
            return result >= 0;
        }
    }

    /// <summary>Throws a one-line error naming the Debian package when liblz4.so.1 cannot be loaded.</summary>
    public static void EnsureAvailable()
    {
        if (LoadError.Value is { } error)
        {
            throw new DllNotFoundException(error);
        }
    }

    private static void CheckInputLength(int length)
    {
        if ((uint)length > MaxInputSize)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"LZ4 blocks hold at most {MaxInputSize} bytes");
        }
    }

    private static string? ProbeLibrary()
    {
        if (NativeLibrary.TryLoad(LibraryName, typeof(Lz4Codec).Assembly, null, out var handle))
        {
            NativeLibrary.Free(handle);
            return null;
        }

        return $"{LibraryName} not found: install the Debian package liblz4-1 (`apt-get install liblz4-1`)";
    }

    [LibraryImport(LibraryName)]
    private static unsafe partial int LZ4_compress_default(byte* src, byte* dst, int srcSize, int dstCapacity);

    [LibraryImport(LibraryName)]
    private static unsafe partial int LZ4_decompress_safe(byte* src, byte* dst, int compressedSize, int dstCapacity);

    [LibraryImport(LibraryName)]
    private static partial int LZ4_compressBound(int inputSize);
}
