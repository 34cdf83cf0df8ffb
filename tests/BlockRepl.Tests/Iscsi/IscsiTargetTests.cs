using System.Buffers.Binary;
using System.Net;
using BlockRepl.Iscsi;
using BlockRepl.Tests.Integration;
using BlockRepl.Tests.Unit;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockRepl.Tests.Iscsi;

/// <summary>
/// The iSCSI target in-process on loopback, driven PDU by PDU with <see cref="IscsiTestClient"/>: negotiation
/// results, digests (data digests too, which libiscsi does not offer), R2T flow control and the CmdSN window.
/// </summary>
public sealed class IscsiTargetTests : IDisposable
{
    private const string Iqn = "iqn.2026-11.io.blockrepl:vol";
    private readonly TempVolume _vol = new(size: 64 << 20);
    private readonly IscsiServer _server;
    private readonly IPEndPoint _endpoint;

    public IscsiTargetTests()
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

    internal static byte[] Read10(uint lba, ushort blocks)
    {
        var cdb = new byte[16];
        cdb[0] = 0x28;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), blocks);
        return cdb;
    }

    internal static byte[] Write10(uint lba, ushort blocks)
    {
        var cdb = Read10(lba, blocks);
        cdb[0] = 0x2a;
        return cdb;
    }

    [Fact]
    public void Login_OperationalKeys_AnsweredWithEachKeysFunction()
    {
        using var client = new IscsiTestClient(_endpoint);
        var response = client.Login(Iqn,
            ("HeaderDigest", "CRC32C,None"), ("DataDigest", "None,CRC32C"), ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "65536"), ("InitialR2T", "No"), ("ImmediateData", "No"), ("ErrorRecoveryLevel", "2"),
            ("MaxConnections", "4"), ("DefaultTime2Wait", "5"), ("DefaultTime2Retain", "60"), ("X-com.example.Foo", "bar"),
            ("MaxRecvDataSegmentLength", "65536"));
        Assert.Equal(0, response.Bhs[36] << 8 | response.Bhs[37]);
        Assert.Equal(0x83, response.Flags & 0x83); // T, NSG=3
        Assert.NotEqual(0, BinaryPrimitives.ReadUInt16BigEndian(response.Bhs.AsSpan(14))); // TSIH assigned
        var keys = response.Keys();
        Assert.Equal("CRC32C", keys["HeaderDigest"]);        // list: the initiator's first supported choice
        Assert.Equal("None", keys["DataDigest"]);
        Assert.Equal("1048576", keys["MaxBurstLength"]);      // min with the target's 1 MiB
        Assert.Equal("65536", keys["FirstBurstLength"]);
        Assert.Equal("No", keys["InitialR2T"]);               // OR
        Assert.Equal("No", keys["ImmediateData"]);            // AND
        Assert.Equal("0", keys["ErrorRecoveryLevel"]);
        Assert.Equal("1", keys["MaxConnections"]);
        Assert.Equal("5", keys["DefaultTime2Wait"]);          // max
        Assert.Equal("20", keys["DefaultTime2Retain"]);       // min
        Assert.Equal("NotUnderstood", keys["X-com.example.Foo"]);
        Assert.Equal("262144", keys["MaxRecvDataSegmentLength"]); // declarative: the target's own
        Assert.Equal("1", keys["TargetPortalGroupTag"]);

        // The header digest is on from the first full-feature PDU: a NOP-Out ping comes back echoed and digested.
        var nop = new byte[48];
        nop[0] = 0x40;
        nop[1] = 0x80;
        BinaryPrimitives.WriteUInt32BigEndian(nop.AsSpan(16), 77);
        BinaryPrimitives.WriteUInt32BigEndian(nop.AsSpan(20), 0xffffffff);
        client.Send(nop, "ping"u8.ToArray());
        var nopIn = client.Read();
        Assert.Equal(0x20, nopIn.Opcode);
        Assert.Equal(77u, nopIn.Itt);
        Assert.Equal("ping"u8.ToArray(), nopIn.Data);
    }

    [Fact]
    public void Login_UnknownTarget_RefusedWithNotFoundAndClosed()
    {
        using var client = new IscsiTestClient(_endpoint);
        var response = client.Login("iqn.2026-11.io.blockrepl:nosuch");
        Assert.Equal(0x0203, response.Bhs[36] << 8 | response.Bhs[37]);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void Discovery_SendTargetsAll_NamesTheTargetAndPortal()
    {
        using var client = new IscsiTestClient(_endpoint);
        Assert.Equal(0, client.Login(null).Bhs[36]);
        client.Text("SendTargets=All", 9);
        var text = client.Read();
        Assert.Equal(0x24, text.Opcode);
        var keys = text.Keys();
        Assert.Equal(Iqn, keys["TargetName"]);
        Assert.Equal($"{_endpoint},1", keys["TargetAddress"]);

        // A discovery session carries no SCSI commands (RFC 7143 4.3): rejected.
        client.Command(Read10(0, 1), 512, read: true, write: false);
        Assert.Equal(0x3f, client.Read().Opcode);
    }

    [Fact]
    public void DataDigest_WriteThenRead_DataRoundTripsAndReachesTheVolume()
    {
        using var client = new IscsiTestClient(_endpoint);
        var login = client.Login(Iqn, ("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C"), ("ImmediateData", "Yes"), ("InitialR2T", "No"));
        Assert.Equal(0, login.Bhs[36]);
        Assert.True(client.HeaderDigest && client.DataDigest);
        var payload = TestData.RandomBytes(8192, seed: 5);
        client.Command(Write10(100, 16), 8192, read: false, write: true, immediate: payload);
        var status = client.Read();
        Assert.Equal(0x21, status.Opcode);
        Assert.Equal(0, status.Bhs[3]);

        client.Command(Read10(100, 16), 8192, read: true, write: false);
        var data = ReadDataIn(client, 8192);
        TestData.AssertBytesEqual(payload, data, "Data-In");
        var onVolume = new byte[8192];
        _vol.Volume.Read(100 * 512, onVolume);
        TestData.AssertBytesEqual(payload, onVolume, "volume");
    }

    [Fact]
    public void DataDigest_Corrupted_ClosesTheConnection_ServerKeepsServing()
    {
        using (var client = new IscsiTestClient(_endpoint))
        {
            Assert.Equal(0, client.Login(Iqn, ("DataDigest", "CRC32C")).Bhs[36]);
            var bhs = new byte[48];
            bhs[0] = 0x01;
            bhs[1] = 0xa1;
            BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), 512);
            BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), 1);
            Write10(0, 1).CopyTo(bhs, 32);
            client.Send(bhs, new byte[512], corruptDataDigest: true);
            Assert.True(client.WaitForClose(), "a data digest error must end the connection (error recovery level 0)");
        }

        var zero = new byte[512];
        _vol.Volume.Read(0, zero);
        using var again = new IscsiTestClient(_endpoint);
        Assert.Equal(0, again.Login(Iqn).Bhs[36]);
        again.Command(Read10(0, 1), 512, read: true, write: false);
        TestData.AssertBytesEqual(zero, ReadDataIn(again, 512), "block 0 after the refused write");
    }

    [Fact]
    public void Write_InitialR2TWithoutImmediateData_R2TsFollowMaxBurstLength()
    {
        using var client = new IscsiTestClient(_endpoint);
        Assert.Equal(0, client.Login(Iqn, ("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "65536"), ("FirstBurstLength", "65536")).Bhs[36]);
        const int length = 600 * 512; // 300 KiB: four full bursts and a short one
        var payload = TestData.RandomBytes(length, seed: 11);
        var itt = client.Command(Write10(2048, 600), length, read: false, write: true);
        var offsets = new List<int>();
        uint expectedR2TSn = 0;
        while (true)
        {
            var pdu = client.Read();
            if (pdu.Opcode == 0x21)
            {
                Assert.Equal(0, pdu.Bhs[3]);
                break;
            }

            Assert.Equal(0x31, pdu.Opcode);
            Assert.Equal(itt, pdu.Itt);
            Assert.Equal(expectedR2TSn++, pdu.Field(36));
            var offset = (int)pdu.Field(40);
            var want = (int)pdu.Field(44);
            Assert.True(want <= 65536, $"R2T asked {want} bytes, more than MaxBurstLength");
            offsets.Add(offset);
            uint dataSn = 0;
            for (var at = offset; at < offset + want; at += 8192)
            {
                var n = Math.Min(8192, offset + want - at);
                client.DataOut(itt, pdu.Field(20), dataSn++, at, payload[at..(at + n)], final: at + n == offset + want);
            }
        }

        Assert.Equal([0, 65536, 131072, 196608, 262144], offsets);
        var onVolume = new byte[length];
        _vol.Volume.Read(2048L * 512, onVolume);
        TestData.AssertBytesEqual(payload, onVolume, "volume");
    }

    [Fact]
    public void CommandWindow_ManyCommandsInFlight_AllAnsweredAndWindowReopens()
    {
        using var client = new IscsiTestClient(_endpoint);
        Assert.Equal(0, client.Login(Iqn).Bhs[36]);
        const int count = 48;
        var itts = new HashSet<uint>();
        for (var i = 0; i < count; i++)
        {
            itts.Add(client.Command(Read10((uint)i * 8, 8), 4096, read: true, write: false));
        }

        uint lastMaxCmdSn = 0;
        while (itts.Count > 0)
        {
            var pdu = client.Read();
            Assert.Equal(0x25, pdu.Opcode);
            if ((pdu.Flags & 0x01) != 0)
            {
                Assert.True(itts.Remove(pdu.Itt), $"status for unknown or repeated task 0x{pdu.Itt:x8}");
                lastMaxCmdSn = pdu.Field(32);
            }
        }

        // All done: ExpCmdSN is 1 + count, and the whole window is open again.
        Assert.Equal(1u + count + (uint)IscsiConnection.CommandWindow - 1, lastMaxCmdSn);
    }

    [Fact]
    public void Login_SentOneByteAtATime_Completes()
    {
        using var client = new IscsiTestClient(_endpoint);
        var keys = IscsiTestClient.Keys(("InitialName", "x"), ("InitiatorName", "iqn.2026-11.test:slow"), ("TargetName", Iqn));
        var bhs = IscsiTestClient.LoginBhs(0x80 | (1 << 2) | 3, 1, 1, 1, 0);
        bhs[7] = (byte)keys.Length;
        bhs[6] = (byte)(keys.Length >> 8);
        var wire = bhs.Concat(keys).Concat(new byte[((keys.Length + 3) & ~3) - keys.Length]).ToArray();
        foreach (var b in wire)
        {
            client.Socket.Send([b]);
        }

        var response = client.Read();
        Assert.Equal(0x23, response.Opcode);
        Assert.Equal(0, response.Bhs[36]);
        Assert.Equal("NotUnderstood", response.Keys()["InitialName"]);
    }

    private static byte[] ReadDataIn(IscsiTestClient client, int length)
    {
        var data = new byte[length];
        while (true)
        {
            var pdu = client.Read();
            Assert.Equal(0x25, pdu.Opcode);
            pdu.Data.CopyTo(data, (int)pdu.Field(40));
            if ((pdu.Flags & 0x01) != 0)
            {
                Assert.Equal(0, pdu.Bhs[3]);
                return data;
            }
        }
    }
}
