using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// The server's own error checking, with libnbd's client-side checks switched off (set_strict_mode(0)) so
/// that bad requests reach the wire. The errno is what the server sent (nbd.Error.errnum).
/// </summary>
public sealed class ServerErrorTests
{
    private const int EINVAL = 22;
    private const int ENOSPC = 28;

    /// <summary>
    /// argv: URI MODE. Runs one request, then checks the connection still works. Prints
    /// {"ok": bool, "errnum": int|null, "error": str|null, "alive": bool}.
    /// </summary>
    private const string ErrorScript =
        """
        import json, sys, nbd
        uri, mode = sys.argv[1], sys.argv[2]
        MiB = 1 << 20
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(uri)
        size = h.get_size()
        ops = {
            "read-past-end": lambda: h.pread(512, size),
            "read-straddling-end": lambda: h.pread(1024, size - 512),
            "write-past-end": lambda: h.pwrite(b"x" * 512, size),
            "write-straddling-end": lambda: h.pwrite(b"x" * 1024, size - 512),
            "zero-past-end": lambda: h.zero(512, size),
            "trim-past-end": lambda: h.trim(512, size),
            "cache-past-end": lambda: h.cache(512, size),
            "block-status-past-end": lambda: h.block_status(512, size, lambda *a: 0),
            "read-33MiB": lambda: h.pread(33 * MiB, 0),
            "read-zero-length": lambda: h.pread(0, 4096),
            "write-zero-length": lambda: h.pwrite(b"", 4096),
            "trim-zero-length": lambda: h.trim(0, 4096),
            "zero-zero-length": lambda: h.zero(0, 4096),
            "cache-zero-length": lambda: h.cache(0, 4096),
        }
        res = {"ok": True, "errnum": None, "error": None}
        try:
            ops[mode]()
        except nbd.Error as e:
            res.update(ok=False, errnum=e.errnum, error=str(e))
        try:
            h.pread(512, 0)
            res["alive"] = True
        except nbd.Error as e:
            res["alive"] = False
            res["aliveError"] = str(e)
        print(json.dumps(res))
        """;

    [Theory]
    [InlineData("read-past-end", EINVAL)]
    [InlineData("read-straddling-end", EINVAL)]
    [InlineData("write-past-end", ENOSPC)]
    [InlineData("write-straddling-end", ENOSPC)]
    [InlineData("zero-past-end", ENOSPC)]
    [InlineData("trim-past-end", EINVAL)]
    [InlineData("cache-past-end", EINVAL)]
    [InlineData("block-status-past-end", EINVAL)]
    [InlineData("read-33MiB", EINVAL)]
    public async Task Request_Invalid_FailsWithErrnoAndConnectionSurvives(string mode, int expectedErrno)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(ErrorScript, daemon.NbdUri, mode);

        Assert.False(result.GetProperty("ok").GetBoolean(), $"{mode} succeeded: {result}");
        Assert.True(
            result.GetProperty("errnum").ValueKind == JsonValueKind.Number && result.GetProperty("errnum").GetInt32() == expectedErrno,
            $"{mode}: expected errno {expectedErrno}, got {result}");
        Assert.True(result.GetProperty("alive").GetBoolean(), $"{mode}: connection unusable after the error: {result}");

        await daemon.StopAsync();
    }

    [Theory]
    [InlineData("read-zero-length")]
    [InlineData("write-zero-length")]
    [InlineData("trim-zero-length")]
    [InlineData("zero-zero-length")]
    [InlineData("cache-zero-length")]
    public async Task Request_ZeroLength_SucceedsAndConnectionSurvives(string mode)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(ErrorScript, daemon.NbdUri, mode);

        Assert.True(result.GetProperty("ok").GetBoolean(), $"{mode} failed: {result}");
        Assert.True(result.GetProperty("alive").GetBoolean(), $"{mode}: connection unusable afterwards: {result}");

        await daemon.StopAsync();
    }

    /// <summary>17 MiB is above what some servers accept; 32 MiB is the advertised maximum block size.</summary>
    [Theory]
    [InlineData(17)]
    [InlineData(32)]
    public async Task ReadWrite_LargePayloadUpToMaximum_SucceedsWithWrittenData(int mib)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(
            """
            import hashlib, json, random, sys, nbd
            h = nbd.NBD()
            h.set_strict_mode(0)
            h.connect_uri(sys.argv[1])
            n, off = int(sys.argv[2]) << 20, (1 << 20) + 7
            data = random.Random(17).randbytes(n)
            h.pwrite(data, off)
            got = h.pread(n, off)
            h.flush()
            print(json.dumps({"length": len(got), "equal": got == data, "sha256": hashlib.sha256(data).hexdigest()}))
            """,
            daemon.NbdUri,
            mib.ToString(System.Globalization.CultureInfo.InvariantCulture));

        Assert.Equal(mib * TestData.MiB, result.GetProperty("length").GetInt32());
        Assert.True(result.GetProperty("equal").GetBoolean(), $"{mib} MiB read returned different bytes than were written");
        var onDisk = TestData.ReadFileRange(daemon.ImagePath, TestData.MiB + 7, mib * TestData.MiB);
        Assert.Equal(result.GetProperty("sha256").GetString(), Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(onDisk)));

        await daemon.StopAsync();
    }

    [Fact]
    public async Task Write_33MiBPayload_ServerDropsConnectionAndKeepsServing()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(
            """
            import json, sys, nbd
            uri = sys.argv[1]
            h = nbd.NBD()
            h.set_strict_mode(0)
            h.connect_uri(uri)
            res = {}
            try:
                h.pwrite(b"\xab" * (33 << 20), 0)
                res["write"] = "ok"
            except nbd.Error as e:
                res["write"] = str(e)
            try:
                h.pread(512, 0)
                res["after"] = "ok"
            except nbd.Error as e:
                res["after"] = str(e)
            h2 = nbd.NBD()
            h2.connect_uri(uri)
            first = h2.pread(4096, 0)
            res["newConnection"] = "ok"
            res["firstPageZero"] = first == bytes(4096)
            print(json.dumps(res))
            """,
            daemon.NbdUri);

        Assert.True(result.GetProperty("write").GetString() != "ok", $"33 MiB write was accepted: {result}");
        Assert.True(result.GetProperty("after").GetString() != "ok", $"connection still usable after a 33 MiB write payload: {result}");
        Assert.Equal("ok", result.GetProperty("newConnection").GetString());
        Assert.True(result.GetProperty("firstPageZero").GetBoolean(), $"the refused 33 MiB write changed the export: {result}");

        await daemon.StopAsync();
    }
}
