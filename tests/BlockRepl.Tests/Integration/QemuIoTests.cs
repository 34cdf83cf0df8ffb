using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>qemu-io, qemu's block-layer client, against the export over TCP and over a unix socket.</summary>
public sealed class QemuIoTests
{
    private const int ModelLength = 2 * TestData.MiB;

    // Applied in order; later writes overlap earlier ones on purpose, but every write keeps some of its bytes
    // in the final content, so a misplaced write cannot hide under a later one. None is 4 KiB-aligned.
    private static readonly (byte Pattern, int Offset, int Length)[] Writes =
    [
        (0x5a, 4095, 3),          // crosses the 4 KiB boundary; its last byte is overwritten by the next one
        (0x11, 4097, 70000),      // 17+ blocks, unaligned at both ends
        (0x22, 65535, 2),         // inside the previous one, crosses 64 KiB
        (0x33, 131071, 4098),     // crosses 128 KiB and ends one byte past 132 KiB
        (0x44, 1048573, 7),       // crosses 1 MiB
        (0x5a, 200000, 1),        // a single byte
        (0x66, 524287, 300001),   // long and odd
    ];

    [Fact]
    public async Task QemuIo_UnalignedWritesAcrossBlockBoundaries_ReadBackAndImageFileMatch()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var model = new byte[ModelLength];
        foreach (var (pattern, offset, length) in Writes)
        {
            model.AsSpan(offset, length).Fill(pattern);
        }

        for (var i = 0; i < Writes.Length; i++)
        {
            var (pattern, offset, length) = Writes[i];
            Assert.True(
                model.AsSpan(offset, length).Contains(pattern),
                $"test data: write {i} is entirely overwritten by later ones, so its placement would go unchecked");
        }

        var runs = TestData.Runs(model);

        // One session: all writes, then read -P over every run of the final content, then flush.
        List<string> writer = ["-f", "raw"];
        foreach (var (pattern, offset, length) in Writes)
        {
            writer.AddRange(["-c", $"write -P 0x{pattern:x2} {offset} {length}"]);
        }

        writer.AddRange(ReadCommands(runs));
        writer.AddRange(["-c", "flush", daemon.NbdUri]);
        AssertQemuIoClean(await Tool.RunAsync("qemu-io", writer, Tool.DefaultTimeout), runs);

        // A second, fresh client sees the same content.
        List<string> reader = ["-f", "raw", .. ReadCommands(runs), daemon.NbdUri];
        AssertQemuIoClean(await Tool.RunAsync("qemu-io", reader, Tool.DefaultTimeout), runs);

        // After the flush the image file holds exactly these bytes, and zeroes everywhere else.
        var image = TestData.ReadWholeFile(daemon.ImagePath);
        Assert.Equal(64L * TestData.MiB, image.Length);
        TestData.AssertBytesEqual(model, image.AsSpan(0, ModelLength), "image file");
        TestData.AssertAllZero(image.AsSpan(ModelLength), "image file beyond the written range", ModelLength);

        await daemon.StopAsync();
    }

    [Fact]
    public async Task QemuIo_UnixSocketExport_WritesAndReadsBack()
    {
        using var dir = new TempDirectory();
        var socket = dir.PathOf("nbd.sock");
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M", nbd: "unix:" + socket);
        Assert.Equal($"nbd+unix:///vol?socket={socket}", daemon.NbdUri);

        (byte Value, int Offset, int Length)[] runs = [(0x7e, 12345, 54321), (0x00, 12345 + 54321, 4096)];
        var write = await Tool.RunAsync(
            "qemu-io", ["-f", "raw", "-c", "write -P 0x7e 12345 54321", "-c", "flush", daemon.NbdUri], Tool.DefaultTimeout);
        AssertQemuIoClean(write, []);
        var read = await Tool.RunAsync("qemu-io", ["-f", "raw", .. ReadCommands(runs), daemon.NbdUri], Tool.DefaultTimeout);
        AssertQemuIoClean(read, runs);

        var bytes = TestData.ReadFileRange(daemon.ImagePath, 12345, 54321);
        TestData.AssertBytesEqual(Enumerable.Repeat((byte)0x7e, 54321).ToArray(), bytes, "image file", 12345);

        await daemon.StopAsync();
    }

    private static IEnumerable<string> ReadCommands(IEnumerable<(byte Value, int Offset, int Length)> runs) =>
        runs.SelectMany(r => new[] { "-c", $"read -P 0x{r.Value:x2} {r.Offset} {r.Length}" });

    /// <summary>
    /// qemu-io reports a pattern mismatch as "Pattern verification failed" (and exit code 1 in qemu 7.2); each
    /// successful read prints "read N/N bytes at offset X". Require both the exit code and every read line.
    /// </summary>
    private static void AssertQemuIoClean(ToolResult result, IEnumerable<(byte Value, int Offset, int Length)> runs)
    {
        result.EnsureSuccess();
        Assert.DoesNotContain("Pattern verification failed", result.Stdout + result.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("failed", result.Stderr, StringComparison.OrdinalIgnoreCase);
        foreach (var (_, offset, length) in runs)
        {
            Assert.Contains($"read {length}/{length} bytes at offset {offset}\n", result.Stdout, StringComparison.Ordinal);
        }
    }
}
