using System.Text.RegularExpressions;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>Role changes with writes in flight, and the split brain row of the generations table.</summary>
public sealed partial class RoleChangeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Demote_WithSyncWritesInFlightOverASlowLink_EveryAcknowledgedWriteIsOnThePeer()
    {
        Tool.Require("qemu-io");
        FaultProxy? proxy = null;
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", beforeStart: async p =>
        {
            proxy = await FaultProxy.StartAsync(p.DirA, p.PortB);
            p.PeerOfA = proxy.Url;
        });
        await using var _ = proxy!;
        await proxy!.SendAsync("delay 20");

        // 400 sequential 64 KiB writes, each with its own pattern; each waits ~40 ms for the peer.
        List<string> commands = [];
        for (var i = 0; i < 400; i++)
        {
            commands.AddRange(["-c", $"write -P {(i % 250) + 1} {i * 65536} 64k"]);
        }

        var writes = Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, .. commands], TimeSpan.FromSeconds(120));
        await Task.Delay(1500);
        var demote = await ReplicaPair.CliAsync(pair.A, "demote");
        Assert.True(demote.ExitCode == 0, $"demote: {demote}");
        var result = await writes;

        var acknowledged = WroteLine().Matches(result.Stdout).Select(m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        output.WriteLine($"{acknowledged.Count} writes acknowledged before the demotion ended them; demote: {demote.Stdout.Trim()}");
        Assert.True(acknowledged.Count is > 0 and < 400, $"the demotion should land mid-run: {acknowledged.Count} writes acknowledged\n{result}");

        var promote = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(promote.ExitCode == 0, $"promote after the demotion: {promote}");
        var reads = acknowledged.SelectMany(offset => new[] { "-c", $"read -P {((offset / 65536) % 250) + 1} {offset} 64k" }).ToArray();
        var check = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, .. reads], TimeSpan.FromSeconds(120));
        Assert.True(check.ExitCode == 0 && !check.Stdout.Contains("Pattern verification failed", StringComparison.Ordinal),
            $"an acknowledged write is missing on the peer after the demotion:\n{check}");
    }

    [Fact]
    public async Task BothNodesWriteWhileApart_SplitBrainDetectedOnBothSides_NoBlockTouched()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x10 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        await pair.A.StopAsync(); // clean stop, in sync

        // B takes over and writes; A comes back without a route to B and writes too.
        Assert.Equal(0, (await ReplicaPair.CliAsync(pair.B!, "promote")).ExitCode);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "write -P 0x20 1M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        pair.PeerOfA = $"http://127.0.0.1:{ReplicaPair.FreePort()}";
        await pair.StartNodeAsync('a');
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x30 2M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await pair.A.StopAsync();
        var hashA = await TestData.Sha256OfFileAsync(pair.ImageA);
        var hashB = await TestData.Sha256OfFileAsync(pair.ImageB);

        // Now A reaches B: both changed since their common generation.
        pair.PeerOfA = null;
        await pair.StartNodeAsync('a');
        var a = await ReplicaPair.WaitForAsync(pair.A, v => ReplicaPair.Str(v, "connection") == "splitbrain", "split brain on the node that came back");
        var b = await ReplicaPair.WaitForAsync(pair.B, v => ReplicaPair.Str(v, "connection") == "splitbrain", "split brain on the node that took over");
        output.WriteLine($"A: {a.GetProperty("lastError")}\nB: {b.GetProperty("lastError")}");
        Assert.Contains("split brain", a.GetProperty("lastError").GetString() ?? "", StringComparison.Ordinal);
        Assert.Equal("primary", ReplicaPair.Str(a, "role"));
        Assert.Equal("primary", ReplicaPair.Str(b, "role"));

        await pair.A.StopAsync();
        await pair.B.StopAsync();
        Assert.Equal(hashA, await TestData.Sha256OfFileAsync(pair.ImageA));
        Assert.Equal(hashB, await TestData.Sha256OfFileAsync(pair.ImageB));
        Assert.NotEqual(hashA, hashB);
    }

    [Fact]
    public async Task Demote_AsyncPairGoneAhead_ResyncFinishes_PeerPromotableWithoutForce_ImagesIdentical()
    {
        Tool.Require("nbdcopy");
        FaultProxy? proxy = null;
        await using var pair = await ReplicaPair.StartAsync("async", "64M", ["--send-queue", "2M"], beforeStart: async p =>
        {
            proxy = await FaultProxy.StartAsync(p.DirA, p.PortB);
            p.PeerOfA = proxy.Url;
        });
        await using var _ = proxy!;
        await proxy!.SendAsync("delay 200");
        var source = pair.DirA.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, 24L * TestData.MiB, seed: 21);
        (await Tool.RunAsync("nbdcopy", [source, pair.A!.NbdUri], Tool.DefaultTimeout)).EnsureSuccess();
        var ahead = await ReplicaPair.VolumeAsync(pair.A);
        Assert.True(ahead.GetProperty("replication").GetProperty("aheadCount").GetInt64() >= 1, $"the queue bound was never hit: {ahead}");

        // Demote right away: what went ahead must still reach the peer (resync), within the demotion's wait.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var demote = await ReplicaPair.CliAsync(pair.A, "demote");
        output.WriteLine($"demote took {clock.Elapsed.TotalSeconds:F1} s: {demote.Stdout.Trim()}");
        Assert.True(demote.ExitCode == 0 && !demote.Stdout.Contains("had not received every write", StringComparison.Ordinal),
            $"the demotion did not drain: {demote}\n{pair.A.Stderr}");

        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "disk") == "uptodate" && ReplicaPair.Str(v, "connection") == "connecting",
            "the peer up to date and the stream closed after the demotion");
        var promote = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(promote.ExitCode == 0, $"promote without --force after a drained demotion: {promote}");
        await ReplicaPair.WaitInSyncAsync(pair.B!);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ after demote/promote of an async pair that had gone ahead: {hashA} vs {hashB}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Demote_TimesOutOverAFrozenLink_BitmapKept_NextPrimaryResyncsOnlyThoseRanges_ImagesIdentical(bool promoteThePeer)
    {
        Tool.Require("qemu-io");
        var (pair, proxy) = await LinkFaultTests.StartBehindProxyAsync("sync", "256M", ["--peer-timeout", "60s"]);
        await using var _ = pair;
        await using var __ = proxy;
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x11 0 4M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);

        // A dead link the primary has not noticed yet (peer timeout 60 s): four writes wait for the peer.
        await proxy.SendAsync("freeze");
        var writes = Tool.RunAsync("qemu-io",
            ["-f", "raw", pair.A.NbdUri, "-c", "aio_write -P 0x22 64M 64k", "-c", "aio_write -P 0x22 100M 64k",
             "-c", "aio_write -P 0x22 150M 64k", "-c", "aio_write -P 0x22 200M 64k", "-c", "aio_flush"], TimeSpan.FromSeconds(60));
        await ReplicaPair.WaitForAsync(pair.A, v => v.GetProperty("replication").GetProperty("lastSeq").GetUInt64()
            >= v.GetProperty("replication").GetProperty("durableSeq").GetUInt64() + 4, "four writes waiting for the frozen peer");

        var demote = await ReplicaPair.CliAsync(pair.A, "demote", "--timeout", "1s");
        output.WriteLine($"demote: {demote.Stdout.Trim()}");
        Assert.True(demote.ExitCode == 0 && demote.Stdout.Contains("the bitmap names", StringComparison.Ordinal), $"demote: {demote}");
        var written = await writes;
        Assert.DoesNotContain("wrote 65536/65536", written.Stdout, StringComparison.Ordinal); // none was acknowledged
        var a = await ReplicaPair.VolumeAsync(pair.A);
        output.WriteLine($"A after the demotion: dirty {a.GetProperty("dirtyBytes")}");
        Assert.True(a.GetProperty("dirtyBytes").GetInt64() is >= 4 * 65536 and <= 4 * TestData.MiB, $"the bitmap should name the four writes: {a}");

        // The frozen connections are reset. Either B takes over (and resyncs A's own changes back from B, named by
        // A's bitmap at the handshake) or A is promoted again (and sends them to B from its bitmap): not in full.
        await proxy.SendAsync("cut");
        await proxy.SendAsync("pass");
        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "connection") != "connected", "B sees the stream gone");
        var next = promoteThePeer ? pair.B! : pair.A;
        var promote = await ReplicaPair.CliAsync(next, "promote");
        Assert.True(promote.ExitCode == 0, $"promote: {promote}");
        var st = await ReplicaPair.WaitForAsync(next, v => ReplicaPair.IsInSync(v) && v.GetProperty("lastResync").ValueKind == System.Text.Json.JsonValueKind.Object,
            "the new primary in sync after a resync", TimeSpan.FromSeconds(60));
        var last = st.GetProperty("lastResync");
        output.WriteLine($"{(promoteThePeer ? "B" : "A")}'s resync: {last}");
        Assert.False(last.GetProperty("full").GetBoolean(), $"a bitmap resync was due, not a full one: {last}");
        Assert.True(last.GetProperty("bytes").GetInt64() is >= 4 * 65536 and <= 4 * TestData.MiB, $"resynced bytes: {last}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ after demote timeout and promote: {hashA} vs {hashB}");
    }

    [GeneratedRegex(@"wrote 65536/65536 bytes at offset (\d+)")]
    private static partial Regex WroteLine();
}
