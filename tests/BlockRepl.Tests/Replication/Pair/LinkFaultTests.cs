using System.Diagnostics;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>Async lag and ahead, a silent dead link, a slow resync interrupted by a failover, the block policy.</summary>
public sealed class LinkFaultTests(ITestOutputHelper output)
{
    /// <summary>A pair whose primary reaches its secondary through tools/faultproxy.py.</summary>
    internal static async Task<(ReplicaPair Pair, FaultProxy Proxy)> StartBehindProxyAsync(
        string mode, string size, IReadOnlyList<string>? extra = null, IReadOnlyList<string>? extraA = null)
    {
        FaultProxy? proxy = null;
        try
        {
            var pair = await ReplicaPair.StartAsync(mode, size, extra, extraA: extraA, beforeStart: async p =>
            {
                proxy = await FaultProxy.StartAsync(p.DirA, p.PortB);
                p.PeerOfA = proxy.Url;
            });
            return (pair, proxy!);
        }
        catch
        {
            if (proxy is not null)
            {
                await proxy.DisposeAsync();
            }

            throw;
        }
    }

    [Fact]
    public async Task AsyncPair_SlowLink_AheadAndBehind_ThenResync_ThenConnected_ImagesIdentical()
    {
        Tool.Require("fio");
        var (pair, proxy) = await StartBehindProxyAsync("async", "64M", ["--send-queue", "2M"]);
        await using var _ = pair;
        await using var __ = proxy;
        await proxy.SendAsync("delay 300");

        // Async: fio's writes are acknowledged at local speed; the 2 MiB bound (queued + in flight) overflows
        // again and again on a 300 ms link, so the primary runs ahead for most of the run.
        (await Tool.RunAsync("fio",
        [
            "--name=slow", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={pair.A!.UnixSocketPath}", "--rw=randwrite", "--bs=64k",
            "--iodepth=4", "--time_based", "--runtime=5", "--size=64M", "--randrepeat=0",
        ], Tool.DefaultTimeout)).EnsureSuccess();
        var lagging = await ReplicaPair.VolumeAsync(pair.A);
        output.WriteLine($"right after fio: {lagging}");
        var aheadCount = lagging.GetProperty("replication").GetProperty("aheadCount").GetInt64();
        Assert.True(aheadCount >= 1, $"the send queue bound was never hit: {lagging}");

        await proxy.SendAsync("delay 0");
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A);
        var b = await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "connection") == "connected", "the secondary connected again");
        output.WriteLine($"converged: {synced}\nB: {b}");

        // Ahead and behind may each last a few milliseconds: the daemons record every state they entered
        // (status connectionEntries and one log line per change), so no poll has to land inside them.
        var entriesA = ReplicaPair.ConnectionEntries(synced);
        var entriesB = ReplicaPair.ConnectionEntries(b);
        var overflows = synced.GetProperty("replication").GetProperty("aheadCount").GetInt64();
        Assert.True(entriesA.GetValueOrDefault("ahead") == overflows,
            $"A entered ahead {entriesA.GetValueOrDefault("ahead")} times, but its send queue overflowed {overflows} times: {synced}");
        Assert.True(entriesA.GetValueOrDefault("syncsource") >= 1, $"A never resynced the dropped writes: {synced}");
        Assert.True(entriesB.GetValueOrDefault("behind") >= 1, $"B never went behind: {b}");
        Assert.True(entriesB.GetValueOrDefault("synctarget") >= 1, $"B was never a resync target: {b}");
        Assert.Contains(pair.A.Stderr.Split('\n'), l => l.Contains("volume vol: connection connected -> ahead", StringComparison.Ordinal));
        Assert.Contains(pair.B!.Stderr.Split('\n'), l => l.Contains("volume vol: connection connected -> behind", StringComparison.Ordinal));
        Assert.Contains("ahead", synced.GetProperty("lastResync").GetProperty("reason").GetString(), StringComparison.Ordinal);
        Assert.Equal(("uptodate", "connected"), (ReplicaPair.Str(b, "disk"), ReplicaPair.Str(b, "connection")));
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"the async secondary did not converge: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task FrozenLink_DeadPeerDetected_WritesGoOn_ResyncAfterTheLinkHeals()
    {
        Tool.Require("qemu-io");
        var (pair, proxy) = await StartBehindProxyAsync("sync", "32M");
        await using var _ = pair;
        await using var __ = proxy;
        await proxy.SendAsync("freeze");

        // A sync write waits for the peer; the frozen link sends neither data nor a reset. The peer timeout (2 s)
        // declares the peer dead and the write completes degraded (on-peer-loss continue).
        var clock = Stopwatch.StartNew();
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x5e 1M 1M"], TimeSpan.FromSeconds(60))).EnsureSuccess();
        output.WriteLine($"the write completed {clock.Elapsed.TotalSeconds:F2} s after the link froze");
        var degraded = await ReplicaPair.WaitForAsync(pair.A, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary noticing the dead link");
        Assert.Contains("dead peer", degraded.GetProperty("lastError").GetString() ?? "", StringComparison.Ordinal);
        Assert.True(degraded.GetProperty("dirtyBytes").GetInt64() >= TestData.MiB, $"the write is not tracked as dirty: {degraded}");

        await proxy.SendAsync("cut");
        await proxy.SendAsync("pass");
        await ReplicaPair.WaitInSyncAsync(pair.A);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after the link healed the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task SecondaryMidResync_PrimaryDies_PromoteRefusedUnlessForced()
    {
        Tool.Require("nbdcopy");
        var (pair, proxy) = await StartBehindProxyAsync("sync", "64M");
        await using var _ = pair;
        await using var __ = proxy;
        await pair.B!.StopAsync();
        var source = pair.DirA.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, 48L * TestData.MiB, seed: 11);
        (await Tool.RunAsync("nbdcopy", [source, pair.A!.NbdUri], Tool.DefaultTimeout)).EnsureSuccess();

        await proxy.SendAsync("delay 300"); // the resync of 48 MiB now takes many seconds
        await pair.StartNodeAsync('b');
        // Recorded, not sampled: B entered synctarget (the promote below proves its disk is still inconsistent).
        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.ConnectionEntries(v).GetValueOrDefault("synctarget") >= 1,
            "the secondary becoming a resync target");
        await pair.A.Kill9Async();
        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "connection") == "connecting", "the secondary noticing the primary is gone");

        var refused = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(refused.ExitCode == 1, $"promote of an inconsistent disk must be refused: {refused}");
        Assert.Contains("the local disk is inconsistent", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal("secondary", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.B!), "role"));

        var forced = await ReplicaPair.CliAsync(pair.B!, "promote", "--force");
        Assert.True(forced.ExitCode == 0, $"promote --force: {forced}");
        var b = await ReplicaPair.VolumeAsync(pair.B!);
        Assert.Equal("primary", ReplicaPair.Str(b, "role"));
    }

    [Fact]
    public async Task OnPeerLossBlock_WritesWaitForThePeer_AndCompleteWhenItReturns()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M", ["--on-peer-loss", "block"]);
        await pair.B!.Kill9Async();
        await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary noticing the peer is gone");

        var write = Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x3c 2M 64k"], TimeSpan.FromSeconds(120));
        await Task.Delay(1500);
        Assert.False(write.IsCompleted, "a write completed while the peer was away under --on-peer-loss block");

        await pair.StartNodeAsync('b');
        (await write).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ after the blocked write: {hashA} vs {hashB}");
        var bytes = TestData.ReadFileRange(pair.ImageB, 2 * TestData.MiB, 65536);
        Assert.True(bytes.AsSpan().IndexOfAnyExcept((byte)0x3c) < 0, "the blocked write is not on the secondary");
    }
}
