using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BlockRepl.Iscsi;
using BlockRepl.Tests.Integration;
using BlockRepl.Tests.Iscsi;
using BlockRepl.Tests.Unit;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockRepl.Tests.Robustness;

/// <summary>
/// Truncated, oversized and seeded-fuzzed PDUs thrown at a live iSCSI target on loopback. The target must
/// answer or close every connection within a deadline, keep its memory bounded, and still serve a
/// well-behaved initiator afterwards. A failure names the seed and case to replay.
/// </summary>
public sealed class IscsiFuzzTests : IDisposable
{
    private const string Iqn = "iqn.2026-11.io.blockrepl:vol";
    private const int Cases = 4000;
    private static readonly TimeSpan CaseDeadline = TimeSpan.FromSeconds(10);

    private readonly TempVolume _vol = new(size: 64 << 20);
    private readonly IscsiServer _server;
    private readonly IPEndPoint _endpoint;

    public IscsiFuzzTests()
    {
        _server = new IscsiServer([new IscsiTarget(Iqn, _vol.Volume)], new IscsiServerOptions(), NullLogger.Instance);
        _server.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        _endpoint = _server.BoundEndpoints[0];
    }

    public void Dispose()
    {
        Assert.True(_server.Stop(TimeSpan.FromSeconds(10)), "server did not stop");
        _vol.Dispose();
    }

    /// <summary>Wire bytes of one PDU (no digests): BHS with the data segment length, then the padded data.</summary>
    private static byte[] Pdu(byte[] bhs, byte[] data)
    {
        bhs[5] = (byte)(data.Length >> 16);
        bhs[6] = (byte)(data.Length >> 8);
        bhs[7] = (byte)data.Length;
        return [.. bhs, .. data, .. new byte[((data.Length + 3) & ~3) - data.Length]];
    }

    private static byte[] Login(string sessionType = "Normal", params (string Key, string Value)[] extra) => Pdu(
        IscsiTestClient.LoginBhs(0x80 | (1 << 2) | 3, 0x23d000000042, 1, 1, 0),
        IscsiTestClient.Keys([("InitiatorName", "iqn.2026-11.test:fuzz"), ("SessionType", sessionType), ("TargetName", Iqn),
            .. new[] { ("ImmediateData", "Yes"), ("InitialR2T", "No"), ("MaxBurstLength", "65536") }.Where(d => extra.All(e => e.Key != d.Item1)),
            .. extra]));

    private static byte[] Command(uint itt, uint cmdSn, byte[] cdb, int edtl, bool read, bool write, byte[]? immediate = null, bool final = true)
    {
        var bhs = new byte[48];
        bhs[0] = 0x01;
        bhs[1] = (byte)((final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 1);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), (uint)edtl);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), cmdSn);
        cdb.CopyTo(bhs, 32);
        return Pdu(bhs, immediate ?? []);
    }

    private static byte[] DataOut(uint itt, uint dataSn, int offset, byte[] data, bool final)
    {
        var bhs = new byte[48];
        bhs[0] = 0x05;
        bhs[1] = (byte)(final ? 0x80 : 0);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), 0xffffffff);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(36), dataSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(40), (uint)offset);
        return Pdu(bhs, data);
    }

    private static byte[] Simple(byte opcode, byte flags, uint itt, uint cmdSn, byte[]? data = null, uint field20 = 0xffffffff)
    {
        var bhs = new byte[48];
        bhs[0] = opcode;
        bhs[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), field20);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), cmdSn);
        return Pdu(bhs, data ?? []);
    }

    /// <summary>Transcripts of what initiators send: login, writes (immediate and unsolicited data), reads, text, TMF, logout.</summary>
    private static byte[][] Seeds()
    {
        var block = new byte[4096];
        new Random(3).NextBytes(block);
        var unmapList = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(unmapList, 22);
        BinaryPrimitives.WriteUInt16BigEndian(unmapList.AsSpan(2), 16);
        BinaryPrimitives.WriteUInt32BigEndian(unmapList.AsSpan(16), 8);
        var unmap = new byte[16];
        unmap[0] = 0x42;
        unmap[8] = 24;
        var inquiry = new byte[16];
        inquiry[0] = 0x12;
        inquiry[4] = 0xff;
        return
        [
            [.. Login(), .. Command(1, 1, IscsiTargetTests.Write10(8, 8), 4096, false, true, block),
                .. Command(2, 2, IscsiTargetTests.Read10(8, 8), 4096, true, false), .. Simple(0x06, 0x80, 3, 3)],
            [.. Login(), .. Command(1, 1, IscsiTargetTests.Write10(64, 16), 8192, false, true, block, final: false),
                .. DataOut(1, 0, 4096, block, final: true), .. Command(2, 2, inquiry, 255, true, false),
                .. Simple(0x00, 0x80, 4, 3, "ping"u8.ToArray())],
            [.. Login(), .. Command(1, 1, unmap, 24, false, true, unmapList), .. Simple(0x42, 0x81, 5, 2, null, 1),
                .. Command(2, 2, IscsiTargetTests.Read10(0, 1), 512, true, false)],
            [.. Login("Discovery"), .. Simple(0x44, 0x80, 1, 1, "SendTargets=All\0"u8.ToArray()), .. Simple(0x46, 0x80, 2, 2)],
            [.. Login("Normal", ("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "4096")),
                .. Command(1, 1, IscsiTargetTests.Read10(0, 64), 32768, true, false), .. Simple(0x45, 0xc5, 6, 2, null, 1)],
        ];
    }

    [Fact]
    public void Target_MutatedTranscripts_NeverCrashesHangsOrGrows()
    {
        const int Seed = 20261129;
        var rng = new Random(Seed);
        var seeds = Seeds();
        var baseline = Process.GetCurrentProcess().WorkingSet64;
        var peak = 0L;
        for (var i = 0; i < Cases; i++)
        {
            var input = Mutate(seeds[rng.Next(seeds.Length)], rng);
            var ended = RunCase(input, abortive: rng.Next(8) == 0);
            Assert.True(ended, $"case {i} (seed {Seed}): the target neither answered nor closed within {CaseDeadline.TotalSeconds} s");
            if (i % 250 == 0)
            {
                peak = Math.Max(peak, Process.GetCurrentProcess().WorkingSet64);
            }
        }

        Assert.True(WaitFor(() => _server.ConnectionCount == 0, TimeSpan.FromSeconds(10)), $"{_server.ConnectionCount} connections still open");
        var growth = peak - baseline;
        Assert.True(growth < 512L << 20, $"working set grew by {growth >> 20} MiB during fuzzing");
        AssertTargetStillServes();
    }

    [Fact]
    public void Target_OversizedDataSegment_ClosesWithoutReadingIt()
    {
        using var client = new IscsiTestClient(_endpoint);
        Assert.Equal(0, client.Login(Iqn).Bhs[36]);
        var bhs = new byte[48];
        bhs[0] = 0x40; // NOP-Out, immediate
        bhs[1] = 0x80;
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), 1);
        bhs[5] = 0xff; // 16 MiB - 1: far beyond MaxRecvDataSegmentLength
        bhs[6] = 0xff;
        bhs[7] = 0xff;
        client.Socket.Send(bhs);
        Assert.True(client.WaitForClose(), "an oversized data segment must end the connection");
        AssertTargetStillServes();
    }

    [Fact]
    public void Target_OversizedLoginSegmentOrAhs_Closes()
    {
        using (var client = new IscsiTestClient(_endpoint))
        {
            var login = IscsiTestClient.LoginBhs(0x87, 1, 1, 1, 0);
            login[5] = 0x10; // 1 MiB of login text: more than a login may carry
            client.Socket.Send(login);
            Assert.True(client.WaitForClose(), "a 1 MiB login data segment must end the connection");
        }

        using (var client = new IscsiTestClient(_endpoint))
        {
            Assert.Equal(0, client.Login(Iqn).Bhs[36]);
            var nop = new byte[48];
            nop[0] = 0x40;
            nop[1] = 0x80;
            nop[4] = 0xff; // TotalAHSLength 1020 bytes: larger than any AHS this target accepts
            client.Socket.Send(nop);
            Assert.True(client.WaitForClose(), "an oversized AHS must end the connection");
        }

        AssertTargetStillServes();
    }

    [Fact]
    public void Target_ClientsVanishMidWrite_BuffersReturnAndTargetKeepsServing()
    {
        for (var i = 0; i < 50; i++)
        {
            using var client = new IscsiTestClient(_endpoint);
            Assert.Equal(0, client.Login(Iqn, ("InitialR2T", "Yes"), ("ImmediateData", "No")).Bhs[36]);
            // A 4 MiB write: the target buffers it and asks for the first burst; the initiator sends part of one
            // Data-Out and resets the connection.
            var itt = client.Command(IscsiTargetTests.Write10(0, 8192), 8192 * 512, read: false, write: true);
            var r2t = client.Read();
            Assert.Equal(0x31, r2t.Opcode);
            var partial = DataOut(itt, 0, 0, new byte[8192], final: false);
            BinaryPrimitives.WriteUInt32BigEndian(partial.AsSpan(20), r2t.Field(20));
            client.Socket.Send(partial.AsSpan(0, 48 + (i * 37 % 8192)));
            client.Socket.LingerState = new LingerOption(true, 0);
        }

        Assert.True(WaitFor(() => _server.ConnectionCount == 0, TimeSpan.FromSeconds(10)), $"{_server.ConnectionCount} connections still open");
        AssertTargetStillServes();
    }

    private bool RunCase(byte[] input, bool abortive)
    {
        using var socket = Connect();
        socket.ReceiveTimeout = (int)CaseDeadline.TotalMilliseconds;
        try
        {
            socket.Send(input);
            if (abortive)
            {
                socket.LingerState = new LingerOption(true, 0);
                return true;
            }

            socket.Shutdown(SocketShutdown.Send);
            var sink = new byte[64 * 1024];
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < CaseDeadline)
            {
                if (socket.Receive(sink) == 0)
                {
                    return true;
                }
            }

            return false;
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted)
        {
            return true;
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.TimedOut)
        {
            return false;
        }
    }

    private static byte[] Mutate(byte[] seed, Random rng)
    {
        var data = new List<byte>(seed);
        var mutations = 1 + rng.Next(4);
        for (var m = 0; m < mutations && data.Count > 0; m++)
        {
            var at = rng.Next(data.Count);
            switch (rng.Next(7))
            {
                case 0:
                    data[at] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1:
                    data[at] = (byte)rng.Next(256);
                    break;
                case 2:
                    data.RemoveRange(at, data.Count - at);
                    break;
                case 3:
                    var junk = new byte[1 + rng.Next(64)];
                    rng.NextBytes(junk);
                    data.InsertRange(at, junk);
                    break;
                case 4: // an extreme 32-bit field (lengths, tags, sequence numbers, offsets)
                    if (at + 4 <= data.Count)
                    {
                        var v = new[] { 0u, 1u, 0x7fffffffu, 0xffffffffu, 0x00ffffffu, 4096u, 65536u, 8192u * 512 }[rng.Next(8)];
                        var b = new byte[4];
                        BinaryPrimitives.WriteUInt32BigEndian(b, v);
                        for (var k = 0; k < 4; k++)
                        {
                            data[at + k] = b[k];
                        }
                    }

                    break;
                case 5:
                    var len = Math.Min(data.Count - at, 1 + rng.Next(64));
                    data.InsertRange(at, data.GetRange(at, len));
                    break;
                default:
                    data.RemoveRange(at, Math.Min(data.Count - at, 1 + rng.Next(16)));
                    break;
            }
        }

        return [.. data];
    }

    private Socket Connect()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Connect(_endpoint);
        return socket;
    }

    private void AssertTargetStillServes()
    {
        var payload = TestData.RandomBytes(4096, seed: 99);
        using var client = new IscsiTestClient(_endpoint);
        Assert.Equal(0, client.Login(Iqn, ("ImmediateData", "Yes"), ("InitialR2T", "No")).Bhs[36]);
        client.Command(IscsiTargetTests.Write10(1000, 8), 4096, read: false, write: true, immediate: payload);
        var status = client.Read();
        Assert.Equal(0x21, status.Opcode);
        Assert.Equal(0, status.Bhs[3]);
        client.Command(IscsiTargetTests.Read10(1000, 8), 4096, read: true, write: false);
        var back = new byte[4096];
        while (true)
        {
            var pdu = client.Read();
            Assert.Equal(0x25, pdu.Opcode);
            pdu.Data.CopyTo(back, (int)pdu.Field(40));
            if ((pdu.Flags & 0x01) != 0)
            {
                break;
            }
        }

        TestData.AssertBytesEqual(payload, back, "read back after the abuse");
    }

    private static bool WaitFor(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            if (condition())
            {
                return true;
            }

            Thread.Sleep(20);
        }

        return condition();
    }
}
