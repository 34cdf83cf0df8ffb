using System.Globalization;
using System.Text.Json;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// Online verify (`blockrepl verify [--repair]`) and checksum resync (`serve --resync checksum`) on a real pair.
/// The secondary's image is corrupted behind its daemon's back with pwrite into the .img file.
/// </summary>
[Collection(DaemonCollection.Name)]
public sealed class VerifyTests(ITestOutputHelper output)
{
    private const long MiB = TestData.MiB;
    private const long KiB = 1024;

    [Fact]
    public async Task Verify_SecondaryCorruptedWhileWriterRuns_NamesExactlyTheCorruptChunks_RepairMakesImagesIdentical()
    {
        Tool.Require("nbdcopy");
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync("sync", "64M");
        var a = pair.A!;
        var source = pair.DirA.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, 32 * MiB, seed: 11, (20 * MiB, 2 * MiB));
        (await Tool.RunAsync("nbdcopy", [source, a.NbdUri], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(a);

        var clean = await VerifyAsync(a);
        Assert.True(clean.ExitCode == 0, $"verify of an in-sync pair: {clean.Result}");
        Assert.Equal(64 * MiB, clean.Report.GetProperty("bytesCompared").GetInt64());
        Assert.Empty(Ranges(clean.Report, "differing"));

        // Three corruptions of the secondary: inside data, in a range neither node ever wrote (a hole), and 6 bytes
        // across the boundary of two 64 KiB chunks, 59 MiB away from the first.
        Corrupt(pair.ImageB, MiB + 100, 3);
        Corrupt(pair.ImageB, 40 * MiB + 5, 1);
        Corrupt(pair.ImageB, 60 * MiB + (64 * KiB) - 3, 6);
        (long, long)[] expected64K = [(MiB, 64 * KiB), (40 * MiB, 64 * KiB), (60 * MiB, 128 * KiB)];
        (long, long)[] expected4K = [(MiB, 4 * KiB), (40 * MiB, 4 * KiB), (60 * MiB + (60 * KiB), 8 * KiB)];

        // A writer elsewhere (8..24 MiB, inside the copied data) keeps records in flight during every verify.
        var socket = a.UnixSocketPath!;
        var load = Tool.RunAsync("fio",
        [
            "--name=load", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={socket}", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--offset=8M", "--size=16M", "--time_based", "--runtime=15", "--randrepeat=0", "--output-format=json",
        ], Tool.DefaultTimeout);
        await Task.Delay(1000);
        var writesBefore = (await ReplicaPair.VolumeAsync(a)).GetProperty("counters").GetProperty("writes").GetInt64();

        var found = await VerifyAsync(a);
        var writesAfter = (await ReplicaPair.VolumeAsync(a)).GetProperty("counters").GetProperty("writes").GetInt64();
        output.WriteLine($"verify during fio ({writesAfter - writesBefore} writes around it): {found.Result.Stdout}");
        Assert.False(load.IsCompleted, "fio ended before the verify did: the verify did not run beside a writer");
        Assert.True(writesAfter > writesBefore, "no write reached the primary while the verify ran");
        Assert.True(found.ExitCode == 3, $"verify of a corrupted secondary must exit 3: {found.Result}");
        Assert.Equal(expected64K, Ranges(found.Report, "differing"));
        Assert.Equal(0, found.Report.GetProperty("dirtyChunksSkipped").GetInt64());

        var fine = await VerifyAsync(a, "--chunk", "4K");
        Assert.True(fine.ExitCode == 3, $"verify --chunk 4K: {fine.Result}");
        Assert.Equal(expected4K, Ranges(fine.Report, "differing"));

        var text = await ReplicaPair.CliAsync(a, "verify");
        Assert.True(text.ExitCode == 3, $"verify (text): {text}");
        Assert.Contains($"differ offset {60 * MiB} length {128 * KiB}", text.Stdout, StringComparison.Ordinal);

        var refused = await ReplicaPair.CliAsync(pair.B!, "verify");
        Assert.True(refused.ExitCode == 1 && refused.Stderr.Contains("run verify on the primary", StringComparison.Ordinal),
            $"verify on the secondary must be refused in one line: {refused}");

        var repaired = await VerifyAsync(a, "--repair");
        output.WriteLine($"verify --repair: {repaired.Result.Stdout}");
        Assert.True(repaired.ExitCode == 4, $"verify --repair must exit 4 (differed, repaired): {repaired.Result}");
        Assert.Equal(expected64K, Ranges(repaired.Report, "differing"));
        Assert.Empty(Ranges(repaired.Report, "remaining"));

        (await load).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(a);
        var after = await VerifyAsync(a);
        Assert.True(after.ExitCode == 0, $"verify after the repair: {after.Result}");
        var status = await ReplicaPair.VolumeAsync(a);
        Assert.True(status.GetProperty("lastVerify").GetProperty("identical").GetBoolean(), $"status lastVerify: {status}");
        Assert.Contains("verify: 3 ranges differ", a.Stderr, StringComparison.Ordinal);

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after verify --repair the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task ChecksumResync_NearlyIdenticalSecondary_SendsOnlyTheDifferingChunks()
    {
        Tool.Require("nbdcopy");
        const long data = 32 * MiB;
        FaultProxy? proxy = null;
        ReplicaPair pair;
        try
        {
            pair = await ReplicaPair.StartAsync("sync", "64M", beforeStart: async p =>
            {
                proxy = await FaultProxy.StartAsync(p.DirA, p.PortB);
                p.PeerOfA = proxy.Url;
            });
        }
        catch
        {
            if (proxy is not null)
            {
                await proxy.DisposeAsync();
            }

            throw;
        }

        await using var _ = pair;
        await using var fp = proxy!;
        var a = pair.A!;
        await ReplicaPair.WaitInSyncAsync(a);
        var source = pair.DirA.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, data, seed: 5, (10 * MiB, 3 * MiB));
        (await Tool.RunAsync("nbdcopy", [source, a.NbdUri], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(a);

        // Control: the secondary's image is kept but its metadata is gone, so it rejoins as a fresh node and gets a
        // full sync; with --resync data every data chunk goes over.
        var dataUp = await RebuildSecondaryAsync(pair, fp, corrupt: false);
        output.WriteLine($"full sync, --resync data: {dataUp} bytes to the secondary");
        Assert.True(dataUp >= data - (3 * MiB), $"the data full sync sent only {dataUp} bytes for {data - (3 * MiB)} bytes of random data");

        // The same with the primary in checksum mode, and four chunks of the kept image corrupted: only those go over.
        await a.StopAsync();
        await pair.StartNodeAsync('a', "primary", ["--resync", "checksum"]);
        await ReplicaPair.WaitInSyncAsync(pair.A!);
        var wireBefore = (await ReplicaPair.VolumeAsync(pair.A!)).GetProperty("wire");
        var checksumUp = await RebuildSecondaryAsync(pair, fp, corrupt: true);
        var status = await ReplicaPair.VolumeAsync(pair.A!);
        var wire = status.GetProperty("wire");
        output.WriteLine($"full sync, --resync checksum: {checksumUp} bytes to the secondary; wire before {wireBefore}, after {wire}");
        output.WriteLine(pair.A!.Stderr);
        // payloadBytes counts each record's 32-byte header too. The corrupted chunk inside the primary's hole goes
        // over as a zero range (a header, no data), so the data is the other three 64 KiB chunks, exactly.
        long Delta(string name) => wire.GetProperty(name).GetInt64() - wireBefore.GetProperty(name).GetInt64();
        var dataSent = Delta("payloadBytes") - (32 * Delta("records"));
        Assert.True(dataSent == 3 * 64 * KiB, $"the checksum resync sent {dataSent} bytes of data, expected the 3 corrupted 64 KiB data chunks");
        Assert.True(Delta("checksumEqualBytes") >= data - (3 * MiB) - (3 * 64 * KiB),
            $"the checksum resync did not find the data equal: {wire}");
        Assert.True(checksumUp < MiB, $"the checksum resync sent {checksumUp} bytes to the secondary, expected far less than 1 MiB");
        Assert.Contains("checksum resync:", pair.A!.Stderr, StringComparison.Ordinal);

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after the checksum resync the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task Verify_PeerAwayOrDirty_RefusedWithOneLineReason_StatusKeepsIt()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        await pair.B!.StopAsync();
        await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary without its peer");
        var away = await ReplicaPair.CliAsync(pair.A!, "verify");
        Assert.True(away.ExitCode == 1 && away.Stderr.StartsWith("blockrepl: verify refused: the peer is not connected", StringComparison.Ordinal),
            $"verify without a peer: {away}");

        // A write while the peer is away is dirty: the images differ legitimately until the resync, so verify waits for it.
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x31 0 64k"], Tool.DefaultTimeout)).EnsureSuccess();
        var dirty = await ReplicaPair.CliAsync(pair.A!, "verify");
        Assert.True(dirty.ExitCode == 1 && dirty.Stderr.Contains("a resync is due or running", StringComparison.Ordinal), $"verify with dirty ranges: {dirty}");
        var status = await ReplicaPair.VolumeAsync(pair.A!);
        Assert.Contains("a resync is due or running", status.GetProperty("lastVerify").GetProperty("error").GetString(), StringComparison.Ordinal);

        await pair.StartNodeAsync('b', "secondary");
        await ReplicaPair.WaitInSyncAsync(pair.A!);
        var ok = await ReplicaPair.CliAsync(pair.A!, "verify");
        Assert.True(ok.ExitCode == 0 && ok.Stdout.Contains("identical", StringComparison.Ordinal), $"verify after the resync: {ok}");
    }

    [Fact]
    public async Task Verify_AsyncPairUnderRandomWritesEverywhere_NoFalsePositives()
    {
        // In async mode the primary's image runs ahead of the secondary's by whatever is queued; a verify that
        // compared the images at different moments would see every chunk written since. Both sides hash at the
        // same stream position instead, so the writes (over the whole volume, the chunks verified included) never
        // show up as differences.
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync("async", "64M");
        var a = pair.A!;
        var load = Tool.RunAsync("fio",
        [
            "--name=load", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={a.UnixSocketPath}", "--rw=randwrite", "--bs=4k", "--iodepth=32",
            "--rate_iops=4000", "--size=64M", "--time_based", "--runtime=15", "--randrepeat=0", "--output-format=json",
        ], Tool.DefaultTimeout);
        await Task.Delay(1000);
        var besideFio = 0;
        var refused = 0;
        for (var i = 0; i < 3 && !load.IsCompleted;)
        {
            var writesBefore = (await ReplicaPair.VolumeAsync(a)).GetProperty("counters").GetProperty("writes").GetInt64();
            var attempt = await ReplicaPair.CliAsync(a, ["verify", "--json", "--chunk", "4K"]);
            if (attempt.ExitCode == 1 && (attempt.Stderr.Contains("a resync is due or running", StringComparison.Ordinal)
                || attempt.Stderr.Contains("the link is ahead", StringComparison.Ordinal)))
            {
                // The async link may overflow its queue under this load (the secondary also hashes in its apply
                // loop) and go ahead; a verify is then refused or stopped (correctly) until the resync ends. Try
                // again: only verifies that ran are judged.
                refused++;
                output.WriteLine($"verify refused while the link resyncs ({refused})");
                await Task.Delay(500);
                continue;
            }

            var run = ParseVerify(attempt);
            var writesAfter = (await ReplicaPair.VolumeAsync(a)).GetProperty("counters").GetProperty("writes").GetInt64();
            output.WriteLine($"verify {i} beside {writesAfter - writesBefore} writes: {run.Result.Stdout}");
            Assert.True(run.ExitCode == 0, $"verify reported differences while only replicated writes ran: {run.Result}");
            Assert.Empty(Ranges(run.Report, "differing"));
            Assert.True(run.Report.GetProperty("chunksCompared").GetInt64() + run.Report.GetProperty("dirtyChunksSkipped").GetInt64() == 16384,
                $"not every 4 KiB chunk was accounted for: {run.Result}");
            besideFio += writesAfter > writesBefore && !load.IsCompleted ? 1 : 0;
            i++;
        }

        // Each verify is three CLI processes (status, verify, status): on a busy machine fio may end during the third.
        // A verify counts when writes reached the primary while it ran and fio was still writing at its end.
        Assert.True(besideFio >= 2, $"only {besideFio} verifies ran from start to end beside fio's writes ({refused} refused during a resync)");
        (await load).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(a);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"the async pair's images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task ChecksumResync_SecondaryKilledUnderLoad_ProbesBesideLiveWrites_ImagesIdentical()
    {
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", ["--resync", "checksum"]);
        var a = pair.A!;
        var load = Tool.RunAsync("fio",
        [
            "--name=load", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={a.UnixSocketPath}", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--size=64M", "--time_based", "--runtime=8", "--randrepeat=0", "--output-format=json",
        ], Tool.DefaultTimeout);
        await Task.Delay(1000);
        await pair.B!.Kill9Async();
        await Task.Delay(1500);
        var dirty = (await ReplicaPair.VolumeAsync(a)).GetProperty("dirtyBytes").GetInt64();
        Assert.True(dirty > 0, "the primary tracked nothing while the secondary was away");
        await pair.StartNodeAsync('b', "secondary");

        // The bitmap resync (checksum probes first) runs while fio keeps writing.
        (await load).EnsureSuccess();
        var status = await ReplicaPair.WaitInSyncAsync(a);
        var wire = status.GetProperty("wire");
        output.WriteLine($"after the resync: {wire}");
        Assert.True(wire.GetProperty("checksumRequests").GetInt64() > 0, $"the resync sent no checksum request: {wire}");
        Assert.Contains("checksum resync:", a.Stderr, StringComparison.Ordinal);

        var check = await VerifyAsync(a);
        Assert.True(check.ExitCode == 0, $"verify after the checksum resync: {check.Result}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after a checksum resync beside live writes the images differ: {hashA} vs {hashB}");
    }

    /// <summary>
    /// Stops the secondary, optionally corrupts 4 chunks of its image, removes its metadata and restarts it (fresh:
    /// a full sync from the primary); returns the bytes the proxy carried to it until the pair was in sync again.
    /// </summary>
    private static async Task<long> RebuildSecondaryAsync(ReplicaPair pair, FaultProxy proxy, bool corrupt)
    {
        await pair.B!.StopAsync();
        if (corrupt)
        {
            Corrupt(pair.ImageB, 100, 1);                        // data
            Corrupt(pair.ImageB, 11 * MiB, 4);                   // a hole on both sides
            Corrupt(pair.ImageB, (30 * MiB) + (64 * KiB) - 1, 2); // across two chunks
        }

        File.Delete(Path.Combine(DaemonProcess.DataDirOf(pair.DirB), "vol.meta"));
        var (before, _) = await proxy.StatsAsync();
        await pair.StartNodeAsync('b', "secondary");
        await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.IsInSync(v) && v.GetProperty("replication").GetProperty("connects").GetInt64() > 0,
            "the rebuilt secondary in sync");
        await ReplicaPair.WaitForAsync(pair.B!, v => ReplicaPair.Str(v, "disk") == "uptodate", "the rebuilt secondary uptodate");
        var (after, _) = await proxy.StatsAsync();
        return after - before;
    }

    private static async Task<(int ExitCode, JsonElement Report, ToolResult Result)> VerifyAsync(DaemonProcess daemon, params string[] extra) =>
        ParseVerify(await ReplicaPair.CliAsync(daemon, ["verify", "--json", .. extra]));

    private static (int ExitCode, JsonElement Report, ToolResult Result) ParseVerify(ToolResult result)
    {
        Assert.True(result.ExitCode is 0 or 3 or 4, $"verify failed: {result}");
        using var doc = JsonDocument.Parse(result.Stdout);
        var report = doc.RootElement.Clone();
        Assert.True(report.GetProperty("done").GetBoolean(), $"verify did not finish: {result}");
        return (result.ExitCode, report, result);
    }

    [Fact]
    public async Task VerifyRepair_PrimaryKilledBeforeTheResyncSentTheRanges_RestartResyncsThem_ImagesIdentical()
    {
        var (pair, proxy) = await LinkFaultTests.StartBehindProxyAsync("sync", "64M");
        await using var _ = pair;
        await using var __ = proxy;
        var a = pair.A!;

        // Nothing is written through the primary, so its activity log names no extent: after a crash only the
        // bitmap on disk can say what the repair still had to send.
        Corrupt(pair.ImageB, 10 * MiB + 7, 1);
        Corrupt(pair.ImageB, 50 * MiB, 2);
        await proxy.SendAsync("delay 400");
        var repair = ReplicaPair.CliAsync(a, "verify", "--repair");
        var marked = a.WaitForLogAsync("marked dirty; waiting for the resync");
        if (await Task.WhenAny(marked, repair) != marked)
        {
            Assert.Fail($"the repair ended before it marked its ranges: {await repair}\n{a.Stderr}");
        }

        await marked;

        // The resync's records need at least 400 ms to reach the peer: none can have arrived.
        await a.Kill9Async();
        output.WriteLine($"verify --repair, killed mid-way: {await repair}");
        await proxy.SendAsync("delay 0");
        await pair.StartNodeAsync('a', "primary");
        var st = await ReplicaPair.WaitForAsync(pair.A!, v => ReplicaPair.IsInSync(v) && v.GetProperty("lastResync").ValueKind == JsonValueKind.Object,
            "the restarted primary in sync after a resync", TimeSpan.FromSeconds(60));
        var last = st.GetProperty("lastResync");
        output.WriteLine($"after the restart: {last}");
        Assert.True(last.GetProperty("bytes").GetInt64() is >= 2 * 4 * KiB and < 64 * MiB, $"the restart should resync the repaired ranges only: {last}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"the repair was lost with the crash: images differ ({hashA} vs {hashB})");
    }

    private static (long, long)[] Ranges(JsonElement report, string name) =>
        [.. report.GetProperty(name).EnumerateArray().Select(r => (r.GetProperty("offset").GetInt64(), r.GetProperty("length").GetInt64()))];

    /// <summary>Flips <paramref name="count"/> bytes of an image file at <paramref name="offset"/>, behind its daemon's back.</summary>
    private static void Corrupt(string image, long offset, int count)
    {
        using var handle = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite);
        var bytes = new byte[count];
        RandomAccess.Read(handle, bytes, offset);
        for (var i = 0; i < count; i++)
        {
            bytes[i] ^= 0xA5;
        }

        RandomAccess.Write(handle, bytes, offset);
    }
}
