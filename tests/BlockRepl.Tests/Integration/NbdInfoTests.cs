using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>nbdinfo (libnbd): what the server advertises in the handshake, and base:allocation extents.</summary>
public sealed class NbdInfoTests
{
    private const int KiB = 1024;

    [Fact]
    public async Task NbdInfo_Json_ReportsSizeFlagsAndBlockSizes()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = (await Tool.RunAsync("nbdinfo", "--json", daemon.NbdUri)).EnsureSuccess();
        using var json = JsonDocument.Parse(result.Stdout);
        var root = json.RootElement;
        Assert.Equal("newstyle-fixed", root.GetProperty("protocol").GetString());
        Assert.True(root.GetProperty("structured").GetBoolean(), "structured replies not negotiated");
        var export = Assert.Single(root.GetProperty("exports").EnumerateArray());

        Assert.Equal("vol", export.GetProperty("export-name").GetString());
        Assert.Equal(64L * TestData.MiB, export.GetProperty("export-size").GetInt64());
        foreach (var flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache" })
        {
            Assert.True(export.GetProperty(flag).GetBoolean(), $"{flag} is false\n{result.Stdout}");
        }

        Assert.False(export.GetProperty("is_read_only").GetBoolean(), "export is read-only");
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt64());
        Assert.Equal(4096, export.GetProperty("block_size_preferred").GetInt64());
        Assert.Equal(32L * TestData.MiB, export.GetProperty("block_size_maximum").GetInt64());
        Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()));

        await daemon.StopAsync();
    }

    [Fact]
    public async Task NbdInfo_List_ShowsTheVolume()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        // --list connects without an export name in the URI and uses NBD_OPT_LIST, then OPT_INFO on each.
        var serverUri = daemon.NbdUri[..daemon.NbdUri.LastIndexOf('/')];
        var result = (await Tool.RunAsync("nbdinfo", "--list", "--json", serverUri)).EnsureSuccess();
        using var json = JsonDocument.Parse(result.Stdout);
        var export = Assert.Single(json.RootElement.GetProperty("exports").EnumerateArray());
        Assert.Equal("vol", export.GetProperty("export-name").GetString());
        Assert.Equal(64L * TestData.MiB, export.GetProperty("export-size").GetInt64());

        await daemon.StopAsync();
    }

    [Fact]
    public async Task NbdInfo_MapAfterTrim_ReportsHoleForTrimmedRange()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", $"write -P 0x77 0 {TestData.MiB}", "-c", "flush", daemon.NbdUri))
            .EnsureSuccess();
        var trim = await NbdPython.RunJsonAsync(
            """
            import json, sys, nbd
            h = nbd.NBD()
            h.connect_uri(sys.argv[1])
            h.trim(256 * 1024, 384 * 1024)
            h.flush()
            print(json.dumps({"ok": True}))
            """,
            daemon.NbdUri);
        Assert.True(trim.GetProperty("ok").GetBoolean());

        var map = (await Tool.RunAsync("nbdinfo", "--map", "--json", daemon.NbdUri)).EnsureSuccess();
        using var json = JsonDocument.Parse(map.Stdout);
        var extents = json.RootElement.EnumerateArray()
            .Select(e => (Offset: e.GetProperty("offset").GetInt64(), Length: e.GetProperty("length").GetInt64(), Type: e.GetProperty("type").GetInt32()))
            .ToList();

        // The extents tile the export.
        long next = 0;
        foreach (var (offset, length, _) in extents)
        {
            Assert.True(offset == next, $"extent at {offset}, expected {next}\n{map.Stdout}");
            next = offset + length;
        }

        Assert.Equal(64L * TestData.MiB, next);

        // type: bit 0 hole, bit 1 zero. Written data is 0; trimmed and never-written ranges are hole,zero (3).
        AssertType(extents, 0, 384 * KiB, 0, map.Stdout);
        AssertType(extents, 384 * KiB, 640 * KiB, 3, map.Stdout);
        AssertType(extents, 640 * KiB, TestData.MiB, 0, map.Stdout);
        AssertType(extents, TestData.MiB, 64L * TestData.MiB, 3, map.Stdout);

        // And the data agrees with the map: zeroes where trimmed, the pattern around it.
        var bytes = TestData.ReadFileRange(daemon.ImagePath, 0, TestData.MiB);
        TestData.AssertBytesEqual(Enumerable.Repeat((byte)0x77, 384 * KiB).ToArray(), bytes.AsSpan(0, 384 * KiB), "image before the trim");
        TestData.AssertAllZero(bytes.AsSpan(384 * KiB, 256 * KiB), "trimmed range in the image", 384 * KiB);
        TestData.AssertBytesEqual(Enumerable.Repeat((byte)0x77, 384 * KiB).ToArray(), bytes.AsSpan(640 * KiB), "image after the trim", 640 * KiB);
        (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", $"read -P 0 {384 * KiB} {256 * KiB}", "-c", $"read -P 0x77 {640 * KiB} {384 * KiB}", daemon.NbdUri))
            .EnsureSuccess();

        await daemon.StopAsync();
    }

    private static void AssertType(List<(long Offset, long Length, int Type)> extents, long from, long to, int expected, string map)
    {
        foreach (var (offset, length, type) in extents.Where(e => e.Offset < to && from < e.Offset + e.Length))
        {
            Assert.True(type == expected, $"extent [{offset}, {offset + length}) has type {type}; [{from}, {to}) should be {expected}\n{map}");
        }
    }
}
