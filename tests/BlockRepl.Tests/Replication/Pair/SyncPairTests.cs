using System.Globalization;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>A sync pair driven by real clients; the images are compared byte for byte (sha256).</summary>
public sealed class SyncPairTests(ITestOutputHelper output)
{
    [Fact]
    public async Task SyncPair_NbdCopyAndRandomQemuIoWrites_ImagesIdentical()
    {
        Tool.Require("qemu-io");
        Tool.Require("nbdcopy");
        await using var pair = await ReplicaPair.StartAsync("sync", "64M");
        var a = pair.A!;

        // 24 MiB of random data with holes, copied in by nbdcopy (parallel, large requests, zeroes for holes).
        var source = pair.DirA.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, 24L * TestData.MiB, seed: 42, (3L * TestData.MiB, TestData.MiB), (17L * TestData.MiB, 2L * TestData.MiB));
        (await Tool.RunAsync("nbdcopy", [source, a.NbdUri], Tool.DefaultTimeout)).EnsureSuccess();

        // 300 random writes (unaligned offsets and lengths, many patterns), zero ranges and discards through qemu-io.
        var random = new Random(7);
        List<string> commands = [];
        for (var i = 0; i < 300; i++)
        {
            var offset = random.NextInt64(0, 63L * TestData.MiB) / 512 * 512;
            var length = random.Next(1, 129) * 512;
            commands.Add(random.Next(10) switch
            {
                0 => $"write -z {offset} {length}",
                1 => $"discard {offset / 4096 * 4096} {(length + 4095) / 4096 * 4096}",
                _ => $"write -P {random.Next(1, 256)} {offset} {length}",
            });
        }

        commands.Add("flush");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", a.NbdUri, .. commands.SelectMany(c => new[] { "-c", c })], Tool.DefaultTimeout)).EnsureSuccess();

        var status = await ReplicaPair.WaitInSyncAsync(a);
        var wire = status.GetProperty("wire");
        output.WriteLine($"primary after the writes: {status}");
        Assert.True(wire.GetProperty("payloadBytes").GetInt64() >= 24L * TestData.MiB,
            $"the stream carried less than the 24 MiB nbdcopy wrote: {wire}");
        Assert.Equal("sync", ReplicaPair.Str(status, "mode"));

        var secondary = await ReplicaPair.VolumeAsync(pair.B!);
        Assert.Equal("secondary", ReplicaPair.Str(secondary, "role"));
        Assert.Equal("uptodate", ReplicaPair.Str(secondary, "disk"));
        Assert.Equal("connected", ReplicaPair.Str(secondary, "connection"));

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"primary {hashA} and secondary {hashB} images differ");
        var zeroes = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(new byte[64 * TestData.MiB]));
        Assert.NotEqual(zeroes, hashA);
    }

    [Fact]
    public async Task Failover_Kill9Primary_PromoteSecondary_ReadsThePatternBack()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "64M");
        // No flush: in sync mode an acknowledged write is on the secondary already.
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x6b 4M 4M", "-c", "write -P 0x2c 12345 1000"], Tool.DefaultTimeout))
            .EnsureSuccess();

        await pair.A.Kill9Async();
        var promote = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(promote.ExitCode == 0, $"promote after the primary died: {promote}");
        Assert.Contains("promoted to primary", promote.Stdout, StringComparison.Ordinal);

        var b = await ReplicaPair.VolumeAsync(pair.B!);
        Assert.Equal("primary", ReplicaPair.Str(b, "role"));
        var read = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "read -P 0x6b 4M 4M", "-c", "read -P 0x2c 12345 1000", "-c", "write -P 0x11 0 64k"],
            Tool.DefaultTimeout);
        Assert.True(read.ExitCode == 0 && !read.Stdout.Contains("Pattern verification failed", StringComparison.Ordinal),
            $"the pattern did not read back from the promoted secondary: {read}");
    }

    [Fact]
    public async Task Promote_WhileThePrimaryIsConnected_RefusedWithOneLineReason()
    {
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        var promote = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(promote.ExitCode == 1, $"promote of a connected secondary must be refused: {promote}");
        Assert.Matches("^blockrepl: promote refused: the peer is connected and primary .*\n?$", promote.Stderr);
        Assert.Equal("secondary", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.B!), "role"));
        Assert.Equal("primary", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A!), "role"));
    }

    [Fact]
    public async Task PlannedSwitchover_DemoteThenPromoteOtherNode_ImagesIdentical()
    {
        Tool.Require("qemu-io");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x41 0 2M"], Tool.DefaultTimeout)).EnsureSuccess();

        var demote = await ReplicaPair.CliAsync(pair.A, "demote");
        Assert.True(demote.ExitCode == 0, $"demote: {demote}");
        Assert.Equal("secondary", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A), "role"));

        var promote = await ReplicaPair.CliAsync(pair.B!, "promote");
        Assert.True(promote.ExitCode == 0, $"promote of the other node after the demotion: {promote}");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "write -P 0x42 1M 2M", "-c", "flush"], Tool.DefaultTimeout)).EnsureSuccess();

        // The old primary exports read-only now: a write through it must fail.
        var refused = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x43 0 4k"], Tool.DefaultTimeout);
        Assert.True(refused.ExitCode != 0 || refused.Stdout.Contains("failed", StringComparison.OrdinalIgnoreCase) || refused.Stderr.Length > 0,
            $"a write to the demoted node succeeded: {refused}");

        var status = await ReplicaPair.WaitInSyncAsync(pair.B);
        output.WriteLine($"new primary: {status}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after the switchover the images differ: {hashA} vs {hashB}");
        var bytes = TestData.ReadFileRange(pair.ImageA, 0, 3 * TestData.MiB);
        Assert.True(bytes.AsSpan(0, TestData.MiB).IndexOfAnyExcept((byte)0x41) < 0 && bytes.AsSpan(TestData.MiB, 2 * TestData.MiB).IndexOfAnyExcept((byte)0x42) < 0,
            "the old primary's image does not hold both nodes' writes");
    }

    [Fact]
    public async Task KillSecondaryUnderLoad_Restart_BitmapResyncMakesImagesIdentical()
    {
        Tool.Require("fio");
        await using var pair = await ReplicaPair.StartAsync("sync", "64M");
        var socket = pair.A!.UnixSocketPath!;
        string[] fioArgs =
        [
            "--name=load", "--ioengine=nbd", $"--uri=nbd+unix:///vol?socket={socket}", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--time_based", "--runtime=3", "--size=64M", "--randrepeat=0", "--output-format=json",
        ];
        var load = Tool.RunAsync("fio", fioArgs, Tool.DefaultTimeout);
        await Task.Delay(1000);
        await pair.B!.Kill9Async();
        (await load).EnsureSuccess();

        // The primary went on alone (on-peer-loss continue) and tracked what the secondary misses.
        var degraded = await ReplicaPair.VolumeAsync(pair.A);
        Assert.Equal("connecting", ReplicaPair.Str(degraded, "connection"));
        var dirty = degraded.GetProperty("dirtyBytes").GetInt64();
        Assert.True(dirty > 0, $"nothing dirty after writing without the secondary: {degraded}");

        await pair.StartNodeAsync('b');
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A);
        output.WriteLine($"dirty while the secondary was away: {dirty} bytes; after restart: {synced}");
        var resyncLine = pair.A.Stderr.Split('\n').LastOrDefault(l => l.Contains("resync of", StringComparison.Ordinal) && l.Contains("started", StringComparison.Ordinal));
        Assert.True(resyncLine is not null && resyncLine.Contains("bitmap resync", StringComparison.Ordinal),
            $"expected a bitmap resync (not a full one) after the secondary came back:\n{pair.A.Stderr}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after the resync the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task AckCheck_TenKill9FailoversAlternatingNodes_NoAcknowledgedWriteLost()
    {
        await AckCheck.EnsureLibnbdAsync();
        await using var pair = await ReplicaPair.StartAsync("sync", "32M");
        var state = pair.DirA.PathOf("ack.state");
        var random = new Random(20261129);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (primary, secondary) = ('a', 'b');
        for (var cycle = 1; cycle <= 10; cycle++)
        {
            var p = primary == 'a' ? pair.A! : pair.B!;
            var s = secondary == 'a' ? pair.A! : pair.B!;
            AckCheck.WriterSummary summary;
            await using (var writer = ChildProcess.Start(AckCheck.Script,
            [
                "write", "--uri", p.NbdUri, "--state", state, "--seconds", "2", "--blocks", "2048", "--flush-every", "64",
                "--fua-ratio", "0.05", "--seed", (500 + cycle).ToString(CultureInfo.InvariantCulture),
            ]))
            {
                await writer.WaitForLineAsync(l => l.StartsWith("ackcheck: writer connected", StringComparison.Ordinal), "ackcheck writer start");
                await Task.Delay(400 + random.Next(600));
                await p.Kill9Async();
                Assert.True(await writer.WaitForExitAsync() == 0, $"cycle {cycle}: writer failed.\n{writer.Describe()}");
                summary = AckCheck.ParseWriterSummary(writer.StdoutLines, writer.Describe());
            }

            var promote = await ReplicaPair.CliAsync(s, "promote");
            Assert.True(promote.ExitCode == 0, $"cycle {cycle}: promote of node {secondary}: {promote}\n{s.Stderr}");

            // Sync mode: every write the dead primary acknowledged is on the new primary, not only the flushed ones.
            var acked = await AckCheck.VerifyAsync(s.NbdUri, state, "acked");
            Assert.True(acked.ExitCode == 0 && acked.Lost == 0 && acked.Corrupt == 0 && acked.Checked > 0,
                $"cycle {cycle}: verify --mode acked on the promoted node {secondary}: {acked}");
            output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s cycle {cycle}: node {primary} killed; writer {summary.Sent} sent, {summary.Acked} acked; "
                + $"node {secondary} promoted: {acked.Checked} blocks checked, {acked.Lost} lost, {acked.Corrupt} corrupt");

            // The killed node comes back, finds the newer generation, steps down and is resynced from the new primary.
            var back = await pair.StartNodeAsync(primary);
            await ReplicaPair.WaitForAsync(back, v => ReplicaPair.Str(v, "role") == "secondary", $"cycle {cycle}: node {primary} stepping down");
            await ReplicaPair.WaitInSyncAsync(s);
            (primary, secondary) = (secondary, primary);
        }

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after ten failovers the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task AckCheck_AsyncPair_FiveKill9Failovers_SecondaryIsAWriteOrderedPrefix()
    {
        await AckCheck.EnsureLibnbdAsync();
        await using var pair = await ReplicaPair.StartAsync("async", "32M");
        var state = pair.DirA.PathOf("ack.state");
        var random = new Random(20261130);
        var (primary, secondary) = ('a', 'b');
        for (var cycle = 1; cycle <= 5; cycle++)
        {
            var p = primary == 'a' ? pair.A! : pair.B!;
            var s = secondary == 'a' ? pair.A! : pair.B!;
            await using (var writer = ChildProcess.Start(AckCheck.Script,
            [
                "write", "--uri", p.NbdUri, "--state", state, "--seconds", "2", "--blocks", "2048", "--flush-every", "64",
                "--fua-ratio", "0.05", "--seed", (700 + cycle).ToString(CultureInfo.InvariantCulture),
            ]))
            {
                await writer.WaitForLineAsync(l => l.StartsWith("ackcheck: writer connected", StringComparison.Ordinal), "ackcheck writer start");
                await Task.Delay(400 + random.Next(600));
                await p.Kill9Async();
                Assert.True(await writer.WaitForExitAsync() == 0, $"cycle {cycle}: writer failed.\n{writer.Describe()}");
            }

            var promote = await ReplicaPair.CliAsync(s, "promote");
            Assert.True(promote.ExitCode == 0, $"cycle {cycle}: promote of node {secondary}: {promote}\n{s.Stderr}");

            // Async: acknowledged writes may be missing, but what is there is a write-ordered prefix, uncorrupted.
            var prefix = await AckCheck.VerifyAsync(s.NbdUri, state, "prefix");
            Assert.True(prefix.ExitCode == 0 && prefix.Corrupt == 0 && prefix.Stderr.Contains("0 blocks break the write order", StringComparison.Ordinal),
                $"cycle {cycle}: verify --mode prefix on the promoted node {secondary}: {prefix}");
            output.WriteLine($"cycle {cycle}: node {primary} killed, node {secondary} promoted ({promote.Stdout.Trim()}): "
                + $"{prefix.Checked} blocks checked, {prefix.Lost} behind their last acknowledged write, {prefix.Corrupt} corrupt, in write order");

            var back = await pair.StartNodeAsync(primary);
            await ReplicaPair.WaitForAsync(back, v => ReplicaPair.Str(v, "role") == "secondary", $"cycle {cycle}: node {primary} stepping down");
            await ReplicaPair.WaitInSyncAsync(s);
            (primary, secondary) = (secondary, primary);
        }

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after five async failovers the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task PrimaryFilesystemFull_OnIoErrorPass_ClientGetsEnospc_ImagesConvergeAnyway()
    {
        Tool.Require("qemu-io");
        // The primary's data dir is a 6 MiB tmpfs under a 64 MiB sparse image; the secondary has room.
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", extra: ["--on-io-error", "pass"],
            beforeStart: p => p.MountTmpfsAsync('a', "6m"));
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x5a 0 2M"], Tool.DefaultTimeout)).EnsureSuccess();
        var full = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x6b 16M 8M"], Tool.DefaultTimeout);
        Assert.Contains("No space left on device", full.Stdout + full.Stderr, StringComparison.Ordinal);

        // The record went to the peer before the local write failed; the range is dirty and the resync sends
        // the primary's own content, so the secondary does not keep data the primary never stored.
        var synced = await ReplicaPair.WaitInSyncAsync(pair.A);
        Assert.True(synced.GetProperty("counters").GetProperty("errors").GetInt64() >= 1, $"no error counted: {synced}");
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after ENOSPC on the primary the images differ: {hashA} vs {hashB}");
    }
}
