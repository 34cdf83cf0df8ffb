using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Microsoft.Win32.SafeHandles;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>Deterministic test content, and byte-level assertions that name the first differing offset.</summary>
internal static partial class TestData
{
    public const int MiB = 1 << 20;

    public static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>
    /// Writes <paramref name="length"/> bytes of seeded random data, except <paramref name="holes"/>, which are
    /// left as real holes (never written) so that tools which look for sparseness find them.
    /// </summary>
    public static async Task WriteRandomFileAsync(string path, long length, int seed, params (long Offset, long Length)[] holes)
    {
        var random = new Random(seed);
        var chunk = new byte[MiB];
        await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None);
        file.SetLength(length);
        for (long offset = 0; offset < length; offset += chunk.Length)
        {
            var count = (int)Math.Min(chunk.Length, length - offset);
            random.NextBytes(chunk.AsSpan(0, count));
            if (holes.Any(h => offset < h.Offset + h.Length && h.Offset < offset + count))
            {
                // Holes are MiB-aligned in every caller, so a chunk is either all hole or all data.
                continue;
            }

            file.Position = offset;
            await file.WriteAsync(chunk.AsMemory(0, count));
        }
    }

    public static async Task<string> Sha256OfFileAsync(string path)
    {
        await using var file = new FileStream(OpenForReading(path), FileAccess.Read, 1 << 20);
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(file));
    }

    /// <summary>Reads a range of a file that another process (the daemon) has open for writing.</summary>
    public static byte[] ReadFileRange(string path, long offset, int count)
    {
        using var handle = OpenForReading(path);
        var buffer = new byte[count];
        var done = 0;
        while (done < count)
        {
            var n = RandomAccess.Read(handle, buffer.AsSpan(done), offset + done);
            Assert.True(n > 0, $"{path} ends before offset {offset + count}");
            done += n;
        }

        return buffer;
    }

    public static byte[] ReadWholeFile(string path)
    {
        using var handle = OpenForReading(path);
        return ReadFileRange(path, 0, checked((int)RandomAccess.GetLength(handle)));
    }

    /// <summary>
    /// open(2) read-only without .NET's emulated FileShare locking: .NET takes an advisory flock on every
    /// FileStream, so a daemon that holds its image with FileShare.None would make a plain FileStream throw,
    /// although reading the file is exactly what a user checking it would do (sha256sum, cmp).
    /// </summary>
    public static SafeFileHandle OpenForReading(string path)
    {
        var fd = Open(path, 0 /* O_RDONLY */);
        if (fd < 0)
        {
            Assert.Fail($"open({path}) failed with errno {Marshal.GetLastPInvokeError()}");
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    public static void AssertBytesEqual(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, string what, long baseOffset = 0)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} bytes, expected {expected.Length}");
        var at = expected.CommonPrefixLength(actual);
        if (at != expected.Length)
        {
            Assert.Fail($"{what}: first difference at offset {baseOffset + at}: 0x{actual[at]:x2}, expected 0x{expected[at]:x2}");
        }
    }

    public static void AssertAllZero(ReadOnlySpan<byte> actual, string what, long baseOffset = 0)
    {
        var at = actual.IndexOfAnyExcept((byte)0);
        if (at >= 0)
        {
            Assert.Fail($"{what}: non-zero byte 0x{actual[at]:x2} at offset {baseOffset + at}");
        }
    }

    /// <summary>The content as maximal runs of one byte value.</summary>
    public static List<(byte Value, int Offset, int Length)> Runs(ReadOnlySpan<byte> content)
    {
        List<(byte, int, int)> runs = [];
        var start = 0;
        for (var i = 1; i <= content.Length; i++)
        {
            if (i == content.Length || content[i] != content[start])
            {
                runs.Add((content[start], start, i - start));
                start = i;
            }
        }

        return runs;
    }

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Open(string path, int flags);
}
