using K4os.Compression.LZ4;

namespace BlockRepl.Replication.Lz4;

/// <summary>
/// LZ4 block compression (the block format, not the frame format) with K4os.Compression.LZ4, a managed port
/// of the reference C library: no native runtime dependency. Batches of journal records are compressed as
/// one block; the receiver knows the uncompressed length from the batch header and decompresses into a
/// buffer of exactly that size. Span-based and allocation-free (the compressor's hash table lives on the
/// stack). The blocks are the reference library's format, so a peer still on the earlier liblz4 binding
/// reads them and vice versa (Lz4CodecTests decodes a block that liblz4 1.9.4 made).
/// </summary>
internal static class Lz4Codec
{
    /// <summary>LZ4_MAX_INPUT_SIZE of lz4.h: the largest input one block may hold.</summary>
    public const int MaxInputSize = 0x7E000000;

    /// <summary>
    /// The block of an empty input: one token, no literals, no match. liblz4 writes and reads it; K4os
    /// answers 0 bytes when encoding empty input and -1 when decoding to 0 bytes, so it is handled here.
    /// </summary>
    private const byte EmptyBlock = 0x00;

    /// <summary>The largest compressed size of <paramref name="inputLength"/> bytes (LZ4_compressBound).</summary>
    public static int MaxCompressedLength(int inputLength)
    {
        CheckInputLength(inputLength);
        return LZ4Codec.MaximumOutputSize(inputLength);
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

    /// <summary>Compresses (LZ4Level.L00_FAST, as LZ4_compress_default); false when <paramref name="destination"/> is too small.</summary>
    public static bool TryCompress(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        CheckInputLength(source.Length);
        if (source.IsEmpty)
        {
            if (destination.IsEmpty)
            {
                written = 0;
                return false;
            }

            destination[0] = EmptyBlock;
            written = 1;
            return true;
        }

        // Negative when the destination is too small; the encoder checks every write against its length.
        var result = LZ4Codec.Encode(source, destination, LZ4Level.L00_FAST);
        written = Math.Max(result, 0);
        return result > 0;
    }

    /// <summary>
    /// Decompresses one block into <paramref name="destination"/>; returns the decompressed length.
    /// The decoder is the port of LZ4_decompress_safe: it never reads or writes outside the two spans,
    /// whatever the input.
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

    /// <summary>Decompresses; false for a corrupt block (an empty one included) or one that does not fit.</summary>
    public static bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        written = 0;
        if (source.IsEmpty)
        {
            return false;
        }

        if (source.Length == 1 && source[0] == EmptyBlock)
        {
            return true;
        }

        // K4os returns the decoded length, or -1 for a malformed block or one larger than the destination.
        var result = LZ4Codec.Decode(source, destination);
        if (result <= 0)
        {
            return false;
        }

        written = result;
        return true;
    }

    private static void CheckInputLength(int length)
    {
        if ((uint)length > MaxInputSize)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"LZ4 blocks hold at most {MaxInputSize} bytes");
        }
    }
}
