using System.Diagnostics;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>Async lag and ahead, a silent dead link, a slow resync interrupted by a failover, the block policy.</summary>
[Collection(DaemonCollection.Name)]
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

        // Watch both sides' connection states while fio writes over the slow link and the link drains.
        var seenA = new HashSet<string>();
        var seenB = new HashSet<string>();
        using var watchStop = new CancellationTokenSource();
        var watch = Task.Run(async () =>
        {
            while (!watchStop.IsCancellationRequested)
            {
                seenA.Add(ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A!), "connection")!);
                seenB.Add(ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.B!), "connection")!);
            }
        });

        // Async: fio's writes are acknowledged at local speed; the 2 MiB bound (queued + in flight) overflows
        // again and again on a 300 ms link, so the primary runs ahead for most of the run.
        (await Tool.RunAsync("fio",
        [
            "--name=slow", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={pair.A!.UnixSocketPath}", "--rw=randwrite", "--bs=64k",
            "--iodepth=4", "--time_based", "--runtime=5", "--size=64M", "--randrepeat=0",
        ], Tool.DefaultTimeout)).EnsureSuccess();
        var lagging = await ReplicaPair.VolumeAsync(pair.A);
        output.WriteLine($"right after fio: {lagging}");
        var r = lagging.GetProperty("replication");
        Assert.True(r.GetProperty("aheadCount").GetInt64() >= 1, $"the send queue bound was never hit: {lagging}");

        await proxy.SendAsync("delay 0");
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A);
        await watchStop.CancelAsync();
        await watch;
        output.WriteLine($"converged: {synced}\nA saw: {string.Join(' ', seenA)}\nB saw: {string.Join(' ', seenB)}");
        Assert.Contains("ahead", seenA);
        Assert.Contains("behind", seenB);
        Assert.Contains("ahead", synced.GetProperty("lastResync").GetProperty("reason").GetString(), StringComparison.Ordinal);
        var b = await ReplicaPair.VolumeAsync(pair.B!);
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
        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "disk") == "inconsistent", "the secondary becoming a resync target");
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
