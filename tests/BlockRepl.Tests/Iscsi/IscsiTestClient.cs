using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using BlockRepl.Iscsi;

namespace BlockRepl.Tests.Iscsi;

/// <summary>A PDU as it travels: the 48-byte BHS and the data segment (without padding).</summary>
internal sealed record IscsiTestPdu(byte[] Bhs, byte[] Data)
{
    public byte Opcode => (byte)(Bhs[0] & 0x3f);

    public byte Flags => Bhs[1];

    public uint Itt => BinaryPrimitives.ReadUInt32BigEndian(Bhs.AsSpan(16));

    public uint Field(int at) => BinaryPrimitives.ReadUInt32BigEndian(Bhs.AsSpan(at));

    public Dictionary<string, string> Keys() =>
        IscsiTextKeys.Parse(Data).ToDictionary(k => k.Key, k => k.Value, StringComparer.Ordinal);
}

/// <summary>
/// A minimal iSCSI initiator for tests: builds PDUs by hand (RFC 7143 11), so tests can send exactly what
/// they mean, including what a real initiator never would. It offers data digests, which libiscsi cannot.
/// </summary>
internal sealed class IscsiTestClient : IDisposable
{
    private readonly Socket _socket;
    private uint _cmdSn = 1;
    private uint _expStatSn;
    private uint _itt = 0x1000;

    public IscsiTestClient(IPEndPoint endpoint, int timeoutMs = 10_000)
    {
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _socket.Connect(endpoint);
        _socket.ReceiveTimeout = timeoutMs;
    }

    public bool HeaderDigest { get; set; }

    public bool DataDigest { get; set; }

    public uint NextItt() => _itt++;

    public Socket Socket => _socket;

    public static byte[] LoginBhs(byte flags, ulong isid, uint itt, uint cmdSn, uint expStatSn)
    {
        var bhs = new byte[48];
        bhs[0] = 0x43; // Login, I bit
        bhs[1] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(bhs.AsSpan(8), (ushort)(isid >> 32));
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(10), (uint)isid);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), expStatSn);
        return bhs;
    }

    public static byte[] Keys(params (string Key, string Value)[] pairs) =>
        IscsiTextKeys.Encode(pairs.Select(p => new KeyValuePair<string, string>(p.Key, p.Value)));

    /// <summary>
    /// One-step login from the operational stage straight to full feature (T=1, CSG=1, NSG=3) with the given
    /// keys; returns the final response. Turns on the digests the target accepted.
    /// </summary>
    public IscsiTestPdu Login(string? target, params (string Key, string Value)[] extra)
    {
        List<(string, string)> keys = [("InitiatorName", "iqn.2026-11.test:client"), ("SessionType", target is null ? "Discovery" : "Normal")];
        if (target is not null)
        {
            keys.Add(("TargetName", target));
        }

        keys.AddRange(extra);
        Send(LoginBhs(0x80 | (1 << 2) | 3, 0x23d000000001, NextItt(), _cmdSn, 0), Keys([.. keys]));
        var response = Read();
        Assert.Equal(0x23, response.Opcode);
        if (response.Bhs[36] == 0)
        {
            _expStatSn = response.Field(24) + 1;
            var answers = response.Keys();
            HeaderDigest = answers.GetValueOrDefault("HeaderDigest") == "CRC32C";
            DataDigest = answers.GetValueOrDefault("DataDigest") == "CRC32C";
        }

        return response;
    }

    /// <summary>A SCSI Command PDU (11.3) for LUN 0 with optional immediate data; returns its ITT.</summary>
    public uint Command(byte[] cdb, int edtl, bool read, bool write, byte[]? immediate = null, bool final = true)
    {
        var itt = NextItt();
        var bhs = new byte[48];
        bhs[0] = 0x01;
        bhs[1] = (byte)((final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 0x01);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), (uint)edtl);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), _cmdSn++);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), _expStatSn);
        cdb.CopyTo(bhs, 32);
        Send(bhs, immediate ?? []);
        return itt;
    }

    public void DataOut(uint itt, uint ttt, uint dataSn, int offset, byte[] data, bool final)
    {
        var bhs = new byte[48];
        bhs[0] = 0x05;
        bhs[1] = (byte)(final ? 0x80 : 0);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), _expStatSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(36), dataSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(40), (uint)offset);
        Send(bhs, data);
    }

    public void Text(string keys, uint itt)
    {
        var bhs = new byte[48];
        bhs[0] = 0x44;
        bhs[1] = 0x80;
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), 0xffffffff);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), _cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), _expStatSn);
        Send(bhs, Encoding.UTF8.GetBytes(keys.Replace('|', '\0') + "\0"));
    }

    /// <summary>Sends a PDU with padding and the negotiated digests; <paramref name="corruptDataDigest"/> flips the data digest.</summary>
    public void Send(byte[] bhs, byte[] data, bool corruptDataDigest = false)
    {
        bhs[5] = (byte)(data.Length >> 16);
        bhs[6] = (byte)(data.Length >> 8);
        bhs[7] = (byte)data.Length;
        var wire = new List<byte>(bhs);
        if (HeaderDigest)
        {
            wire.AddRange(Digest(bhs));
        }

        if (data.Length > 0)
        {
            var padded = new byte[(data.Length + 3) & ~3];
            data.CopyTo(padded, 0);
            wire.AddRange(padded);
            if (DataDigest)
            {
                var digest = Digest(padded);
                if (corruptDataDigest)
                {
                    digest[0] ^= 0xff;
                }

                wire.AddRange(digest);
            }
        }

        _socket.Send(wire.ToArray());
    }

    public static byte[] Digest(ReadOnlySpan<byte> bytes)
    {
        var d = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(d, IscsiProtocol.Crc32C(bytes));
        return d;
    }

    /// <summary>Reads one PDU, checking the negotiated digests; throws at end of stream.</summary>
    public IscsiTestPdu Read()
    {
        var bhs = ReadExact(48);
        if (HeaderDigest)
        {
            Assert.Equal(Digest(bhs), ReadExact(4));
        }

        var length = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7];
        var padded = ReadExact((length + 3) & ~3);
        if (DataDigest && length > 0)
        {
            Assert.Equal(Digest(padded), ReadExact(4));
        }

        var opcode = bhs[0] & 0x3f;
        var carriesStatus = opcode is 0x21 or 0x22 or 0x24 or 0x26 or 0x3f || (opcode == 0x25 && (bhs[1] & 0x01) != 0);
        if (carriesStatus)
        {
            _expStatSn = BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(24)) + 1;
        }

        return new IscsiTestPdu(bhs, padded[..length]);
    }

    /// <summary>True when the target closed the connection (or reset it) before sending anything more.</summary>
    public bool WaitForClose()
    {
        var buffer = new byte[4096];
        try
        {
            while (true)
            {
                if (_socket.Receive(buffer) == 0)
                {
                    return true;
                }
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
        {
            return true;
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.TimedOut)
        {
            return false;
        }
    }

    private byte[] ReadExact(int count)
    {
        var buffer = new byte[count];
        var done = 0;
        while (done < count)
        {
            var n = _socket.Receive(buffer, done, count - done, SocketFlags.None);
            if (n == 0)
            {
                throw new IOException($"target closed the connection ({done} of {count} bytes read)");
            }

            done += n;
        }

        return buffer;
    }

    public void Dispose() => _socket.Dispose();
}
