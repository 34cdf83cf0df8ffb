using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>`blockrepl status` over the admin socket.</summary>
public sealed class StatusTests
{
    private static readonly string[] CounterNames = ["reads", "writes", "flushes", "trims", "zeroes", "bytesRead", "bytesWritten"];

    [Fact]
    public async Task Status_AfterRequests_ReportsVolumeAndIncreasedCounters()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var before = Counters(Volume(await daemon.StatusJsonAsync()));
        var done = await NbdPython.RunJsonAsync(
            """
            import json, sys, nbd
            h = nbd.NBD()
            h.connect_uri(sys.argv[1])
            for i in range(5):
                h.pwrite(bytes([i + 1]) * 4096, i * 65536 + 1)
            for i in range(3):
                h.pread(4096, i * 65536)
            h.flush()
            h.trim(65536, 8 << 20)
            h.zero(65536, 9 << 20)
            h.shutdown()
            print(json.dumps({"ok": True}))
            """,
            daemon.NbdUri);
        Assert.True(done.GetProperty("ok").GetBoolean());

        var volume = Volume(await daemon.StatusJsonAsync());
        Assert.Equal("vol", volume.GetProperty("name").GetString());
        Assert.Equal(64L * TestData.MiB, volume.GetProperty("sizeBytes").GetInt64());
        Assert.Equal("primary", volume.GetProperty("role").GetString());
        Assert.Equal("uptodate", volume.GetProperty("disk").GetString());
        Assert.Equal("standalone", volume.GetProperty("connection").GetString());
        Assert.True(volume.TryGetProperty("clients", out _), $"no clients field: {volume}");

        var after = Counters(volume);
        AssertIncreasedBy(before, after, "writes", 5);
        AssertIncreasedBy(before, after, "reads", 3);
        AssertIncreasedBy(before, after, "flushes", 1);
        AssertIncreasedBy(before, after, "trims", 1);
        AssertIncreasedBy(before, after, "zeroes", 1);
        AssertIncreasedBy(before, after, "bytesWritten", 5 * 4096);
        AssertIncreasedBy(before, after, "bytesRead", 3 * 4096);

        // The human-readable form works too and names the volume.
        var text = (await Tool.RunAsync(RepoLayout.DaemonBinary, ["status", "--admin", daemon.AdminAddress], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.Contains("vol", text.Stdout, StringComparison.Ordinal);

        await daemon.StopAsync();
    }

    [Fact]
    public async Task Status_AfterWrites_ReportsRuntimeGcCountersThatGrow()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var before = Runtime(await daemon.StatusJsonAsync());
        var done = await NbdPython.RunJsonAsync(
            """
            import json, sys, nbd
            h = nbd.NBD()
            h.connect_uri(sys.argv[1])
            for i in range(256):
                h.pwrite(bytes([i % 251 + 1]) * 65536, i * 65536)
            h.flush()
            h.shutdown()
            print(json.dumps({"ok": True}))
            """,
            daemon.NbdUri);
        Assert.True(done.GetProperty("ok").GetBoolean());
        var after = Runtime(await daemon.StatusJsonAsync());

        // A running .NET process has allocated before it answers its first status call, and 256 writes over NBD
        // plus a second gRPC call allocate more (each status reply alone is a new protobuf message).
        Assert.True(before.Allocated > 0, $"totalAllocatedBytes {before.Allocated}");
        Assert.True(after.Allocated > before.Allocated, $"totalAllocatedBytes did not grow: {before.Allocated} -> {after.Allocated}");
        for (var g = 0; g < 3; g++)
        {
            Assert.True(after.Collections[g] >= before.Collections[g], $"gen{g} collections went down: {before.Collections[g]} -> {after.Collections[g]}");
        }

        // CollectionCount(n) counts collections of generation n or higher, so the counts never increase with n.
        Assert.True(after.Collections[0] >= after.Collections[1] && after.Collections[1] >= after.Collections[2],
            $"collection counts not ordered gen0 >= gen1 >= gen2: {string.Join(", ", after.Collections)}");
        Assert.True(after.PauseMs >= before.PauseMs && before.PauseMs >= 0, $"gcPauseTotalMs: {before.PauseMs} -> {after.PauseMs}");
        Assert.True(after.Collections[0] > 0 || after.PauseMs == 0, $"a GC pause of {after.PauseMs} ms with no collection");

        // The human-readable form has the same counters on one line.
        var text = (await Tool.RunAsync(RepoLayout.DaemonBinary, ["status", "--admin", daemon.AdminAddress], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.Contains("gc: collections gen0 ", text.Stdout, StringComparison.Ordinal);

        await daemon.StopAsync();
    }

    private sealed record RuntimeCounters(long[] Collections, long Allocated, double PauseMs);

    private static RuntimeCounters Runtime(JsonElement status)
    {
        Assert.True(status.TryGetProperty("runtime", out var rt) && rt.ValueKind == JsonValueKind.Object, $"no runtime object: {status}");
        Assert.True(rt.TryGetProperty("gcPauseTotalMs", out var pause) && pause.ValueKind == JsonValueKind.Number, $"no gcPauseTotalMs: {rt}");
        return new RuntimeCounters(
            [Field(rt, "gen0Collections"), Field(rt, "gen1Collections"), Field(rt, "gen2Collections")],
            Field(rt, "totalAllocatedBytes"),
            pause.GetDouble());
    }

    private static long Field(JsonElement parent, string name) =>
        parent.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt64() : Fail(name, parent);

    private static JsonElement Volume(JsonElement status)
    {
        var volumes = status.GetProperty("volumes");
        Assert.True(volumes.GetArrayLength() == 1, $"expected one volume: {status}");
        return volumes[0];
    }

    private static Dictionary<string, long> Counters(JsonElement volume)
    {
        var counters = volume.GetProperty("counters");
        return CounterNames.ToDictionary(n => n, n => counters.TryGetProperty(n, out var v) ? v.GetInt64() : Fail(n, counters));
    }

    private static long Fail(string name, JsonElement parent)
    {
        Assert.Fail($"'{name}' missing: {parent}");
        return 0;
    }

    private static void AssertIncreasedBy(Dictionary<string, long> before, Dictionary<string, long> after, string name, long atLeast) =>
        Assert.True(after[name] - before[name] >= atLeast, $"{name}: {before[name]} -> {after[name]}, expected an increase of at least {atLeast}");
}
