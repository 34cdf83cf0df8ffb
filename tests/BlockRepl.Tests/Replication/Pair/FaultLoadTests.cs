using System.Globalization;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// Link faults under a write load (tools/faultproxy.py between the nodes): a partition, a link that flaps 20 times,
/// a slow link. Each ends with the acknowledged-write checker on the secondary (0 lost) and identical images.
/// </summary>
public sealed class FaultLoadTests(ITestOutputHelper output)
{
    private static Task<(ReplicaPair Pair, FaultProxy Proxy)> StartBehindProxyAsync(string size) =>
        LinkFaultTests.StartBehindProxyAsync("sync", size);

    /// <summary>Runs the ackcheck writer on the primary for <paramref name="seconds"/> while <paramref name="faults"/> plays.</summary>
    private static async Task<AckCheck.WriterSummary> WriteUnderFaultsAsync(ReplicaPair pair, string state, int seconds, int seed, Func<Task> faults)
    {
        await using var writer = ChildProcess.Start(AckCheck.Script,
        [
            "write", "--uri", pair.A!.NbdUri, "--state", state, "--seconds", seconds.ToString(CultureInfo.InvariantCulture), "--blocks", "4096",
            "--flush-every", "64", "--fua-ratio", "0.05", "--seed", seed.ToString(CultureInfo.InvariantCulture),
        ]);
        await writer.WaitForLineAsync(l => l.StartsWith("ackcheck: writer connected", StringComparison.Ordinal), "ackcheck writer start");
        await faults();
        Assert.True(await writer.WaitForExitAsync() == 0, $"writer failed (writes must go on through link faults).\n{writer.Describe()}");
        return AckCheck.ParseWriterSummary(writer.StdoutLines, writer.Describe());
    }

    private async Task AssertConvergedAsync(ReplicaPair pair, string state, AckCheck.WriterSummary summary)
    {
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A!);
        var lag = synced.GetProperty("replication");
        output.WriteLine($"writer: {summary.Sent} sent, {summary.Acked} acked; link: {lag.GetProperty("connects")} connects, "
            + $"{lag.GetProperty("disconnects")} disconnects; last resync: {synced.GetProperty("lastResync")}");
        var acked = await AckCheck.VerifyAsync(pair.B!.NbdUri, state, "acked");
        Assert.True(acked.ExitCode == 0 && acked.Lost == 0 && acked.Corrupt == 0 && acked.Checked > 0,
            $"verify --mode acked on the secondary: {acked}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task Partition_DuringWrites_WritesGoOn_ReconnectResyncs_ZeroLost()
    {
        await AckCheck.EnsureLibnbdAsync();
        var (pair, proxy) = await StartBehindProxyAsync("32M");
        await using var _ = pair;
        await using var __ = proxy;
        var state = pair.DirA.PathOf("ack.state");
        var summary = await WriteUnderFaultsAsync(pair, state, seconds: 9, seed: 71, async () =>
        {
            await Task.Delay(1500);
            await proxy.SendAsync("freeze"); // a silent partition: no data, no reset
            await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary declaring the peer dead");
            await Task.Delay(1500);
            await proxy.SendAsync("cut");
            await proxy.SendAsync("pass");
        });
        var a = await ReplicaPair.VolumeAsync(pair.A!);
        Assert.True(a.GetProperty("replication").GetProperty("disconnects").GetInt64() >= 1, $"the partition was not noticed: {a}");
        await AssertConvergedAsync(pair, state, summary);
    }

    [Fact]
    public async Task AcksDropped_OneWayLoss_DuringWrites_DeadPeerDetected_Resync_ZeroLost()
    {
        await AckCheck.EnsureLibnbdAsync();
        var (pair, proxy) = await StartBehindProxyAsync("32M");
        await using var _ = pair;
        await using var __ = proxy;
        var state = pair.DirA.PathOf("ack.state");
        var summary = await WriteUnderFaultsAsync(pair, state, seconds: 9, seed: 74, async () =>
        {
            await Task.Delay(1500);
            await proxy.SendAsync("drop down"); // data still reaches the secondary; its acks vanish
            await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary declaring the peer dead");
            await Task.Delay(1500);
            await proxy.SendAsync("cut");
            await proxy.SendAsync("pass");
        });
        await AssertConvergedAsync(pair, state, summary);
    }

    [Fact]
    public async Task LinkFlaps20Times_UnderWrites_ZeroLost_ImagesIdentical()
    {
        await AckCheck.EnsureLibnbdAsync();
        var (pair, proxy) = await StartBehindProxyAsync("32M");
        await using var _ = pair;
        await using var __ = proxy;
        var state = pair.DirA.PathOf("ack.state");
        var random = new Random(2026);
        var resets = 0;
        var summary = await WriteUnderFaultsAsync(pair, state, seconds: 16, seed: 72, async () =>
        {
            for (var flap = 0; flap < 20; flap++)
            {
                // Wait for the link to be up again (the primary reconnects with a backoff), then cut it.
                await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.Str(v, "connection") is "connected" or "syncsource", $"the link up before flap {flap + 1}");
                await Task.Delay(100 + random.Next(300));
                var answer = await proxy.SendAsync("cut");
                resets += answer.Contains("reset=0", StringComparison.Ordinal) ? 0 : 1;
                await Task.Delay(50 + random.Next(150));
                await proxy.SendAsync("pass");
            }
        });
        var a = await ReplicaPair.VolumeAsync(pair.A!);
        output.WriteLine($"{resets} of 20 cuts reset a live connection");
        Assert.True(resets >= 15 && a.GetProperty("replication").GetProperty("disconnects").GetInt64() >= 15, $"the flaps were not seen ({resets} resets): {a}");
        await AssertConvergedAsync(pair, state, summary);
    }

    [Fact]
    public async Task SlowLink_30ms_UnderWrites_ZeroLost_ImagesIdentical()
    {
        await AckCheck.EnsureLibnbdAsync();
        var (pair, proxy) = await StartBehindProxyAsync("32M");
        await using var _ = pair;
        await using var __ = proxy;
        var state = pair.DirA.PathOf("ack.state");
        await proxy.SendAsync("delay 30");
        var summary = await WriteUnderFaultsAsync(pair, state, seconds: 3, seed: 73, () => Task.CompletedTask);
        await proxy.SendAsync("delay 0");
        Assert.True(summary.Acked > 0, $"nothing acknowledged over a 30 ms link: {summary}");
        await AssertConvergedAsync(pair, state, summary);
    }
}
