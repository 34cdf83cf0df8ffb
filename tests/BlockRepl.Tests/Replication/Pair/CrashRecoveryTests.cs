using System.Globalization;
using System.Text.Json;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// The activity log and the persistent bitmap at work: a crash of either node costs a resync of what may differ,
/// not of the volume; a split brain ends with resolve --discard-my-data from the bitmaps.
/// </summary>
public sealed class CrashRecoveryTests(ITestOutputHelper output)
{
    private const long MiB = 1024 * 1024;

    /// <summary>fio 4 KiB random writes into a 16 MiB hot set at 512 MiB of a 1 GiB volume.</summary>
    private static Task<ToolResult> HotSetLoadAsync(DaemonProcess primary, int seconds) =>
        Tool.RunAsync("fio",
        [
            "--name=hot", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={primary.UnixSocketPath}", "--rw=randwrite", "--bs=4k",
            "--iodepth=16", "--time_based", $"--runtime={seconds}", "--offset=512M", "--size=16M", "--randrepeat=0",
        ], TimeSpan.FromSeconds(seconds + 60));

    private static JsonElement LastResync(JsonElement volume) => volume.GetProperty("lastResync");

    [Theory]
    [InlineData("sync")]
    [InlineData("async")]
    public async Task Kill9PrimaryUnderLoad_Restart_ResyncsOnlyTheActivityLog_ImagesIdentical(string mode)
    {
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync(mode, "1G");
        var load = HotSetLoadAsync(pair.A!, 30);
        await Task.Delay(2500);
        var before = await ReplicaPair.VolumeAsync(pair.A!);
        await pair.A!.Kill9Async();
        await load; // fails: its server died

        Assert.True(before.GetProperty("counters").GetProperty("writes").GetInt64() > 1000, $"too little load before the kill: {before}");
        await pair.StartNodeAsync('a', "primary");
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A!);
        var last = LastResync(synced);
        output.WriteLine($"{mode}: after kill -9 of the primary and restart: {last}");
        Assert.Equal(JsonValueKind.Object, last.ValueKind);
        Assert.False(last.GetProperty("full").GetBoolean(), $"a full resync after a primary crash: {last}");
        var bytes = last.GetProperty("bytes").GetInt64();
        Assert.InRange(bytes, 1, 4 * 16 * MiB); // the hot set's 4 extents (16 MiB), not the 1 GiB volume
        Assert.Contains("activity-log extents", last.GetProperty("reason").GetString(), StringComparison.Ordinal);
        Assert.Contains(pair.A!.Stderr.Split('\n'), l => l.Contains("recovery after a crash as primary", StringComparison.Ordinal));

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ after the recovery resync: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task Kill9SecondaryUnderLoad_Restart_ResyncsOnlyWhatItMissed()
    {
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync("sync", "1G");
        var load = HotSetLoadAsync(pair.A!, 4);
        await Task.Delay(1500);
        await pair.B!.Kill9Async();
        (await load).EnsureSuccess(); // the primary goes on alone

        await pair.StartNodeAsync('b');
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A!);
        var last = LastResync(synced);
        output.WriteLine($"after kill -9 of the secondary: {last}");
        Assert.False(last.GetProperty("full").GetBoolean(), $"a full resync after a secondary crash: {last}");
        Assert.InRange(last.GetProperty("bytes").GetInt64(), 1, 16 * MiB);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task Kill9Primary_PromoteSecondary_OldPrimaryReturns_StepsDown_BitmapResyncFromBothBitmaps()
    {
        Tool.Require("fio");
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "1G");
        var load = HotSetLoadAsync(pair.A!, 30);
        await Task.Delay(2000);
        await pair.A!.Kill9Async();
        await load;

        Assert.Equal(0, (await ReplicaPair.CliAsync(pair.B!, "promote")).ExitCode);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "write -P 0x5a 100M 2M"], Tool.DefaultTimeout)).EnsureSuccess();

        // A comes back as primary, finds B newer, steps down; B resyncs A from B's bitmap plus A's own (its log).
        await pair.StartNodeAsync('a', "primary");
        var synced = await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.IsInSync(v) && v.GetProperty("lastResync").ValueKind == JsonValueKind.Object,
            "B in sync with the returned A");
        var last = LastResync(synced);
        output.WriteLine($"old primary returned: {last}");
        Assert.False(last.GetProperty("full").GetBoolean(), $"a full resync of the old primary: {last}");
        Assert.InRange(last.GetProperty("bytes").GetInt64(), 2 * MiB, 2 * MiB + 4 * 16 * MiB);
        var a = await ReplicaPair.VolumeAsync(pair.A!);
        Assert.Equal("secondary", ReplicaPair.Str(a, "role"));

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task SplitBrain_ResolveDiscardMyDataOnTheVictim_BitmapResyncFromTheSurvivor_ImagesIdentical()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x10 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        await pair.A.StopAsync();

        Assert.Equal(0, (await ReplicaPair.CliAsync(pair.B!, "promote")).ExitCode);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "write -P 0x20 1M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        pair.PeerOfA = $"http://127.0.0.1:{ReplicaPair.FreePort().ToString(CultureInfo.InvariantCulture)}";
        await pair.StartNodeAsync('a');
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x30 4M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await pair.A.StopAsync();
        pair.PeerOfA = null;
        await pair.StartNodeAsync('a');
        await ReplicaPair.WaitForAsync(pair.A, v => ReplicaPair.Str(v, "connection") == "splitbrain", "split brain on A");
        await ReplicaPair.WaitForAsync(pair.B, v => ReplicaPair.Str(v, "connection") == "splitbrain", "split brain on B");
        var survivorBefore = await TestData.Sha256OfFileAsync(pair.ImageB);

        var resolve = await ReplicaPair.CliAsync(pair.A, "resolve", "--discard-my-data");
        output.WriteLine(resolve.Stdout + resolve.Stderr);
        Assert.Equal(0, resolve.ExitCode);
        Assert.Contains("bitmap", resolve.Stdout, StringComparison.Ordinal);

        var synced = await ReplicaPair.WaitForAsync(pair.B, v => ReplicaPair.IsInSync(v) && v.GetProperty("lastResync").ValueKind == JsonValueKind.Object,
            "the survivor in sync with the victim");
        var last = LastResync(synced);
        output.WriteLine($"after resolve: {last}");
        Assert.False(last.GetProperty("full").GetBoolean(), $"full resync after resolve: {last}");
        Assert.Equal(2 * MiB, last.GetProperty("bytes").GetInt64()); // B's 1 MiB at 1M and A's own 1 MiB at 4M
        var a = await ReplicaPair.VolumeAsync(pair.A);
        Assert.Equal(("secondary", "uptodate", false), (ReplicaPair.Str(a, "role"), ReplicaPair.Str(a, "disk"), a.GetProperty("discardMyData").GetBoolean()));

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.Equal(survivorBefore, hashB); // the survivor's data was not touched
        Assert.True(hashA == hashB, $"images differ after resolve: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task CleanRestartOfBothNodes_GenerationsEqual_InSync_NothingResynced()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "16M");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x42 3M 2M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        await pair.A.StopAsync();
        await pair.B!.StopAsync();

        await pair.StartNodeAsync('b');
        await pair.StartNodeAsync('a', "primary");
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A!);
        Assert.Equal(JsonValueKind.Null, synced.GetProperty("lastResync").ValueKind); // no resync in this run
        Assert.Contains(pair.A!.Stderr.Split('\n'), l => l.Contains("in sync", StringComparison.Ordinal) && l.Contains("generations equal", StringComparison.Ordinal));
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.Equal(hashA, hashB);
    }

    [Fact]
    public async Task StatusWatch_DuringAResync_PrintsProgressWithRateAndEta_UntilInterrupted()
    {
        await using var pair = await ReplicaPair.StartAsync("sync", "256M", ["--resync-rate", "40M"], waitInSync: false,
            beforeStart: async p =>
            {
                // Node A's image holds 128 MiB of data before it first starts: the full sync to fresh B takes a few
                // seconds at the capped rate, long enough to watch.
                var data = Path.Combine(DaemonProcess.DataDirOf(p.DirA), "vol.img");
                Directory.CreateDirectory(Path.GetDirectoryName(data)!);
                await TestData.WriteRandomFileAsync(data, 128L * TestData.MiB, seed: 5);
                await using (var f = new FileStream(data, FileMode.Open))
                {
                    f.SetLength(256L * TestData.MiB);
                }
            });
        // The watch starts before the sync does, so no poll has to catch the sync running: its own lines say when.
        await using var watch = ChildProcess.Start(RepoLayout.DaemonBinary, ["status", "--watch", "--admin", pair.A!.AdminAddress]);
        static bool Progress(string l) => l.Contains("full sync", StringComparison.Ordinal) && l.Contains("ETA", StringComparison.Ordinal);
        var first = await watch.WaitForLineAsync(Progress, "a progress line");
        await watch.WaitForLineAsync(l => Progress(l) && l != first, "a second, later progress line");
        watch.Signal(ChildProcess.SIGINT);
        Assert.Equal(0, await watch.WaitForExitAsync());
        var lines = watch.StdoutLines.Where(l => l.Contains("full sync", StringComparison.Ordinal)).ToList();
        output.WriteLine(string.Join('\n', lines));
        Assert.True(lines.Count >= 2, $"expected a line per second: {watch.Describe()}");
        Assert.Matches(@"vol primary uptodate syncsource  full sync \d+\.\d% .* of 256\.0 MiB .*/s  ETA \d+:\d\d:\d\d", lines[^1]);
        await ReplicaPair.WaitInSyncAsync(pair.A);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.Equal(hashA, hashB);
    }

    [Fact]
    public async Task Resolve_WithoutDiscardMyData_IsRefused()
    {
        await using var pair = await ReplicaPair.StartAsync("sync", "16M");
        var resolve = await ReplicaPair.CliAsync(pair.A!, "resolve");
        Assert.Equal(1, resolve.ExitCode);
        Assert.Contains("--discard-my-data", resolve.Stderr, StringComparison.Ordinal);
        Assert.Equal("primary", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A!), "role"));
    }
}
