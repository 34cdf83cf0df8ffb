using System.Globalization;
using System.Text;
using BlockRepl.Replication.Lz4;

namespace BlockRepl.Tests.Replication;

/// <summary>
/// LZ4 block round trips through the codec (K4os.Compression.LZ4), blocks made by the reference library (liblz4)
/// decoding to their input, and corrupt or truncated input failing cleanly without writing outside the output.
/// </summary>
public sealed class Lz4CodecTests
{
    public static TheoryData<string, int> Inputs => new()
    {
        { "random", 4096 },
        { "random", 1 << 20 },
        { "zero", 4096 },
        { "zero", 1 << 20 },
        { "half", 4096 },
        { "half", 64 * 1024 },
        { "random", 1 },
    };

    [Theory]
    [MemberData(nameof(Inputs))]
    public void Lz4Codec_RoundTrip_RestoresInput(string kind, int length)
    {
        var input = Make(kind, length);
        var compressed = new byte[Lz4Codec.MaxCompressedLength(length)];

        var compressedLength = Lz4Codec.Compress(input, compressed);
        var output = new byte[length];
        var written = Lz4Codec.Decompress(compressed.AsSpan(0, compressedLength), output);

        Assert.Equal(length, written);
        Assert.True(input.AsSpan().SequenceEqual(output));
        if (kind == "zero" && length >= 4096)
        {
            Assert.True(compressedLength < length / 50, $"zeroes compressed to {compressedLength} of {length}");
        }
        else if (kind == "half")
        {
            Assert.InRange(compressedLength, length / 4, length * 3 / 4);
        }
    }

    [Fact]
    public void Lz4Codec_DestinationTooSmall_TryCompressReturnsFalse()
    {
        var input = Make("random", 4096);
        Assert.False(Lz4Codec.TryCompress(input, new byte[100], out _));
        Assert.Throws<ArgumentException>(() => Lz4Codec.Compress(input, new byte[100]));
    }

    [Fact]
    public void Lz4Codec_CorruptedInput_FailsWithoutCrashing()
    {
        var input = Make("half", 64 * 1024);
        var compressed = new byte[Lz4Codec.MaxCompressedLength(input.Length)];
        var compressedLength = Lz4Codec.Compress(input, compressed);
        var random = new Random(1234);
        var output = new byte[input.Length];
        var failures = 0;

        for (var i = 0; i < 2000; i++)
        {
            var corrupt = compressed.AsSpan(0, compressedLength).ToArray();
            for (var flips = 0; flips < 1 + (i % 8); flips++)
            {
                corrupt[random.Next(corrupt.Length)] ^= (byte)(1 + random.Next(255));
            }

            // Also cut some inputs short: a truncated block must fail too.
            var length = i % 5 == 0 ? random.Next(1, corrupt.Length) : corrupt.Length;
            if (!Lz4Codec.TryDecompress(corrupt.AsSpan(0, length), output, out _))
            {
                failures++;
            }
        }

        // Most corruptions are detected by the decoder; the rest decode to other bytes (the batch CRC32C
        // catches those). Either way nothing reads or writes outside the buffers.
        Assert.True(failures > 100, $"only {failures} of 2000 corrupt blocks were rejected");
        Assert.Throws<InvalidDataException>(() => Lz4Codec.Decompress([0xFF, 0xFF, 0xFF], output));
        Assert.Throws<InvalidDataException>(() => Lz4Codec.Decompress(compressed.AsSpan(0, compressedLength), new byte[input.Length - 1]));
    }

    [Fact]
    public void Lz4Codec_TruncatedOrCorruptBlock_NeverWritesOutsideTheDestination()
    {
        var input = Make("half", 16 * 1024);
        var compressed = new byte[Lz4Codec.MaxCompressedLength(input.Length)];
        var compressedLength = Lz4Codec.Compress(input, compressed);
        const int Guard = 256;
        const byte GuardByte = 0xA5;
        var buffer = new byte[Guard + input.Length + Guard];
        var random = new Random(99);

        // Every strict prefix of the block (what a short read would deliver), then bit flips on the whole block.
        for (var i = 0; i < compressedLength + 500; i++)
        {
            var block = compressed.AsSpan(0, compressedLength).ToArray();
            var length = i < compressedLength ? i : compressedLength;
            if (i >= compressedLength)
            {
                block[random.Next(block.Length)] ^= (byte)(1 + random.Next(255));
            }

            buffer.AsSpan().Fill(GuardByte);
            var ok = Lz4Codec.TryDecompress(block.AsSpan(0, length), buffer.AsSpan(Guard, input.Length), out var written);

            Assert.True(buffer.AsSpan(0, Guard).IndexOfAnyExcept(GuardByte) < 0, $"case {i}: bytes written before the destination");
            Assert.True(buffer.AsSpan(Guard + input.Length).IndexOfAnyExcept(GuardByte) < 0, $"case {i}: bytes written after the destination");
            Assert.InRange(written, 0, input.Length);
            if (i < compressedLength)
            {
                // A prefix may end on a sequence boundary and decode, but never to the whole input: the receiver's
                // check that the batch decompresses to exactly uncompressed_length rejects it.
                Assert.False(ok && written == input.Length, $"a {length}-byte prefix of a {compressedLength}-byte block decoded to the whole input");
            }
        }
    }

    [Fact]
    public void Lz4Codec_BlockFromLiblz4_DecodesToItsInput()
    {
        // LZ4_compress_default of liblz4 1.9.4 (Debian 12's liblz4-1, which the codec used before K4os) over this
        // input: a 500-byte match (extended match length) and 256 trailing literals (extended literal length).
        var input = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("blockrepl journal record ", 20)))
            .Concat(Enumerable.Range(0, 256).Select(i => (byte)i)).ToArray();
        var block = Convert.FromHexString(
            "ff0a626c6f636b7265706c206a6f75726e616c207265636f7264201900ffc9f0f1" +
            string.Concat(Enumerable.Range(0, 256).Select(i => i.ToString("x2", CultureInfo.InvariantCulture))));
        var output = new byte[input.Length];

        Assert.Equal(289, block.Length);
        Assert.Equal(input.Length, Lz4Codec.Decompress(block, output));
        Assert.Equal(input, output);
    }

    [Fact]
    public void Lz4Codec_EmptyInput_IsTheOneTokenBlockLiblz4Writes()
    {
        // liblz4 compresses 0 bytes to the single token 0x00 and decodes that block to 0 bytes.
        var compressed = new byte[Lz4Codec.MaxCompressedLength(0)];
        Assert.Equal(1, Lz4Codec.Compress([], compressed));
        Assert.Equal(0, compressed[0]);
        Assert.True(Lz4Codec.TryDecompress(compressed.AsSpan(0, 1), [], out var written));
        Assert.Equal(0, written);
        Assert.False(Lz4Codec.TryDecompress([], new byte[16], out _));
    }

    private static byte[] Make(string kind, int length)
    {
        var data = new byte[length];
        var random = new Random(length);
        switch (kind)
        {
            case "random":
                random.NextBytes(data);
                break;
            case "half":
                // Alternating 64-byte runs of random bytes and zeroes: about half compressible.
                random.NextBytes(data);
                for (var i = 64; i < length; i += 128)
                {
                    data.AsSpan(i, Math.Min(64, length - i)).Clear();
                }

                break;
        }

        return data;
    }
}
