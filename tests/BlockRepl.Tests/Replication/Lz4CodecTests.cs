using BlockRepl.Replication.Lz4;

namespace BlockRepl.Tests.Replication;

/// <summary>LZ4 block round trips through liblz4.so.1, and corrupt input failing cleanly.</summary>
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
    public void Lz4Codec_Library_IsAvailable() =>
        Assert.True(Lz4Codec.IsAvailable, "liblz4.so.1 missing: install it with `apt-get install -y --no-install-recommends liblz4-1` (or run `make deps`)");

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
