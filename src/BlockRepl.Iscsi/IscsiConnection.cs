using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using BlockRepl.Core.Hosting;
using Microsoft.Extensions.Logging;
using static BlockRepl.Iscsi.IscsiProtocol;

namespace BlockRepl.Iscsi;

/// <summary>
/// One iSCSI connection (one session: MaxConnections=1), on a thread of its own: the login phase, then the
/// full feature phase (RFC 7143 5, 6). Error recovery level 0: a digest error or protocol violation ends the
/// connection, and the initiator logs in again.
/// </summary>
/// <remarks>
/// The connection thread reads PDUs and starts commands in CmdSN order; a command whose volume acknowledgement
/// is pending (replication, FUA) completes on the thread pool and sends its response then. Sends go through
/// <see cref="_sendLock"/>, which also guards the sequence numbers (StatSN, ExpCmdSN, MaxCmdSN) so every PDU
/// carries a consistent snapshot. Bounds: at most <see cref="CommandWindow"/> non-immediate commands are
/// outstanding (the CmdSN window shrinks as commands wait), and buffered Data-Out is capped by
/// <see cref="MaxBufferedWriteBytes"/>.
/// </remarks>
internal sealed class IscsiConnection : IHostedConnection
{
    public const int CommandWindow = 64;
    public const long MaxBufferedWriteBytes = 32L * 1024 * 1024;

    private readonly Socket _socket;
    private readonly IscsiServer _server;
    private readonly ILogger _log;
    private readonly Lock _sendLock = new();
    private readonly Dictionary<uint, PendingTask> _pending = [];
    private readonly Dictionary<uint, PendingTask> _running = [];
    private readonly byte[] _bhs = new byte[BhsLength];
    private readonly byte[] _ahs = new byte[MaxAhsLength];
    private readonly byte[] _digest = new byte[4];
    private byte[] _data = new byte[MaxLoginDataSegmentLength + 4];
    private byte[]? _sendBuffer;
    private IscsiNegotiation _params = new();
    private uint _statSn;
    private uint _expCmdSn;
    private int _active;
    private long _bufferedBytes;
    private uint _nextTtt = 1;
    private bool _fullFeature;
    private volatile bool _stopping;
    private bool _disposed;
    private bool _discovery;
    private IscsiTargetState? _target;
    private ScsiNexus? _nexus;
    private ushort _tsih;

    public IscsiConnection(Socket socket, IscsiServer server, string remote, ILogger log)
    {
        _socket = socket;
        _server = server;
        Remote = remote;
        _log = log;
        _socket.NoDelay = true;
    }

    public string Remote { get; }

    public ScsiNexus? Nexus => _nexus;

    private sealed class PendingTask
    {
        public required uint Itt;
        public required ulong Lun;
        public required byte[] Cdb;
        public required int Edtl;
        public required bool Read;
        public required bool Immediate;
        public byte[]? Buffer;
        public int Received;
        public int UnsolicitedLimit;
        public uint Ttt = ReservedTag;
        public int BurstEnd;
        public uint R2TSn;
        public uint ExpectedDataSn;
        public volatile bool Aborted;
    }

    /// <summary>Asks the connection to end: the socket is shut down, the read loop sees the end and returns.</summary>
    public void Stop()
    {
        _stopping = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // already closed
        }
    }

    public void Dispose()
    {
        // Under the send lock: a command completing on the thread pool may be sending right now, and the send
        // buffer must not go back to the pool under it. Later sends see _disposed and fail.
        lock (_sendLock)
        {
            _disposed = true;
            _socket.Dispose();
            if (_sendBuffer is not null)
            {
                ArrayPool<byte>.Shared.Return(_sendBuffer);
                _sendBuffer = null;
            }
        }
    }

    public void Run()
    {
        IDisposable? lease = null;
        try
        {
            if (!Login())
            {
                return;
            }

            if (_target is not null)
            {
                lease = _target.Target.Volume.AttachClient("iscsi", Remote);
            }

            while (!_stopping)
            {
                if (!ReadPdu(out var dataLength))
                {
                    break;
                }

                if (!HandleFullFeature(dataLength))
                {
                    break;
                }
            }
        }
        catch (IscsiProtocolException ex)
        {
            IscsiLog.ProtocolViolation(_log, Remote, ex.Message);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            if (!_stopping)
            {
                IscsiLog.ConnectionLost(_log, Remote, ex.Message);
            }
        }
        catch (Exception ex)
        {
            IscsiLog.ConnectionFailed(_log, Remote, ex);
        }
        finally
        {
            lock (_sendLock)
            {
                foreach (var task in _pending.Values)
                {
                    ReturnBuffer(task);
                }

                _pending.Clear();
            }

            if (_nexus is not null)
            {
                _server.SessionEnded(_nexus, this);
            }

            lease?.Dispose();
            IscsiLog.Disconnected(_log, Remote);
        }
    }

    // ---------------------------------------------------------------- PDU input

    /// <summary>
    /// Reads one PDU (RFC 7143 11.1: BHS, AHS, header digest, data segment, padding, data digest) into
    /// <see cref="_bhs"/> and <see cref="_data"/>. Returns false at a clean end of stream before a PDU.
    /// </summary>
    private bool ReadPdu(out int dataLength)
    {
        dataLength = 0;
        if (!ReadExact(_bhs, allowEnd: true))
        {
            return false;
        }

        var ahsLength = _bhs[4] * 4;
        if (ahsLength > MaxAhsLength)
        {
            IscsiProtocolException.Throw($"AHS of {ahsLength} bytes (at most {MaxAhsLength} accepted)");
        }

        ReadExact(_ahs.AsSpan(0, ahsLength), allowEnd: false);
        if (_params.HeaderDigest && _fullFeature)
        {
            ReadExact(_digest, allowEnd: false);
            var crc = Crc32C(_ahs.AsSpan(0, ahsLength), Crc32C(_bhs));
            if (crc != BinaryPrimitives.ReadUInt32LittleEndian(_digest))
            {
                IscsiProtocolException.Throw("header digest error");
            }
        }

        dataLength = DataSegmentLength(_bhs);
        var limit = _fullFeature ? MaxRecvDataSegmentLength : MaxLoginDataSegmentLength;
        if (dataLength > limit)
        {
            IscsiProtocolException.Throw($"data segment of {dataLength} bytes exceeds MaxRecvDataSegmentLength {limit}");
        }

        var padded = Padded(dataLength);
        if (_data.Length < padded)
        {
            _data = new byte[Padded(MaxRecvDataSegmentLength)];
        }

        ReadExact(_data.AsSpan(0, padded), allowEnd: false);
        if (_params.DataDigest && _fullFeature && dataLength > 0)
        {
            ReadExact(_digest, allowEnd: false);
            if (Crc32C(_data.AsSpan(0, padded)) != BinaryPrimitives.ReadUInt32LittleEndian(_digest))
            {
                IscsiProtocolException.Throw("data digest error");
            }
        }

        return true;
    }

    private bool ReadExact(Span<byte> buffer, bool allowEnd)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var n = _socket.Receive(buffer[done..], SocketFlags.None);
            if (n == 0)
            {
                if (done == 0 && allowEnd)
                {
                    return false;
                }

                throw new IOException($"connection closed in the middle of a PDU ({done} of {buffer.Length} bytes)");
            }

            done += n;
        }

        return true;
    }

    // ---------------------------------------------------------------- PDU output

    /// <summary>
    /// Sends one PDU. Under the send lock it fills StatSN (bytes 24-27; advanced when <paramref name="advanceStatSn"/>),
    /// ExpCmdSN and MaxCmdSN (28-35), then the digests the connection negotiated.
    /// </summary>
    private void Send(Span<byte> bhs, ReadOnlySpan<byte> data, bool setStatSn = true, bool advanceStatSn = true, int completed = 0)
    {
        SetDataSegmentLength(bhs, data.Length);
        lock (_sendLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _active -= completed;
            if (setStatSn)
            {
                WriteUInt32(bhs, 24, _statSn);
                if (advanceStatSn)
                {
                    _statSn++;
                }
            }

            WriteUInt32(bhs, 28, _expCmdSn);
            WriteUInt32(bhs, 32, MaxCmdSn());
            var headerDigest = _params.HeaderDigest && _fullFeature;
            var dataDigest = _params.DataDigest && _fullFeature && data.Length > 0;
            var total = BhsLength + (headerDigest ? 4 : 0) + Padded(data.Length) + (dataDigest ? 4 : 0);
            if (_sendBuffer is null || _sendBuffer.Length < total)
            {
                if (_sendBuffer is not null)
                {
                    ArrayPool<byte>.Shared.Return(_sendBuffer);
                }

                _sendBuffer = ArrayPool<byte>.Shared.Rent(Math.Max(total, 64 * 1024));
            }

            var buffer = _sendBuffer.AsSpan(0, total);
            bhs.CopyTo(buffer);
            var at = BhsLength;
            if (headerDigest)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(buffer[at..], Crc32C(bhs));
                at += 4;
            }

            data.CopyTo(buffer[at..]);
            buffer.Slice(at + data.Length, Padded(data.Length) - data.Length).Clear();
            if (dataDigest)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(buffer[(at + Padded(data.Length))..], Crc32C(buffer.Slice(at, Padded(data.Length))));
            }

            var sent = 0;
            while (sent < total)
            {
                sent += _socket.Send(buffer[sent..], SocketFlags.None);
            }
        }
    }

    /// <summary>MaxCmdSN = ExpCmdSN - 1 + free slots: never decreases, since a new command takes a slot as ExpCmdSN grows.</summary>
    private uint MaxCmdSn() => _expCmdSn - 1 + (uint)Math.Max(CommandWindow - _active, 0);

    private static Span<byte> NewBhs(byte opcode, byte flags, uint itt)
    {
        var bhs = new byte[BhsLength];
        bhs[0] = opcode;
        bhs[1] = flags;
        WriteUInt32(bhs, 16, itt);
        return bhs;
    }

    private void SendReject(byte reason, ReadOnlySpan<byte> rejectedBhs)
    {
        var bhs = NewBhs(OpReject, FinalBit, ReservedTag);
        bhs[2] = reason;
        Send(bhs, rejectedBhs);
    }

    // ---------------------------------------------------------------- Login (RFC 7143 6)

    private bool Login()
    {
        var login = new LoginState();
        var text = new List<byte>();
        while (true)
        {
            if (!ReadPdu(out var dataLength))
            {
                return false;
            }

            if ((_bhs[0] & 0x3f) != OpLogin)
            {
                IscsiProtocolException.Throw($"opcode 0x{_bhs[0] & 0x3f:x2} before the login completed");
            }

            var flags = _bhs[1];
            var transit = (flags & 0x80) != 0;
            var more = (flags & 0x40) != 0;
            var csg = (flags >> 2) & 0x03;
            var nsg = flags & 0x03;
            var isid = ((ulong)BinaryPrimitives.ReadUInt16BigEndian(_bhs.AsSpan(8)) << 32) | ReadUInt32(_bhs, 10);
            var tsih = BinaryPrimitives.ReadUInt16BigEndian(_bhs.AsSpan(14));
            var itt = ReadUInt32(_bhs, 16);
            var cmdSn = ReadUInt32(_bhs, 24);
            if (!login.Started)
            {
                login.Started = true;
                login.Isid = isid;
                _statSn = ReadUInt32(_bhs, 28);
                _expCmdSn = cmdSn;
            }

            if (_bhs[3] > 0)
            {
                return LoginFail(itt, isid, 0x0205, "unsupported version (VersionMin > 0)");
            }

            if (text.Count + dataLength > IscsiTextKeys.MaxTextBytes)
            {
                return LoginFail(itt, isid, 0x0200, "login text too long");
            }

            text.AddRange(_data.AsSpan(0, dataLength));
            if (more)
            {
                // C bit (6.2): more text follows; answer with an empty response.
                SendLoginResponse(itt, isid, tsih, (byte)(csg << 2), [], 0);
                continue;
            }

            List<KeyValuePair<string, string>> keys;
            try
            {
                keys = IscsiTextKeys.Parse(text.ToArray());
            }
            catch (IscsiProtocolException ex)
            {
                return LoginFail(itt, isid, 0x0200, ex.Message);
            }

            text.Clear();
            if (tsih != 0)
            {
                return LoginFail(itt, isid, 0x020a, "adding a connection to an existing session is not supported (MaxConnections=1)");
            }

            if (csg == 2 || (transit && (nsg == 2 || nsg < csg)))
            {
                return LoginFail(itt, isid, 0x0200, $"invalid stage transition {csg} -> {nsg}");
            }

            var answers = new List<KeyValuePair<string, string>>();
            var failure = ProcessLoginKeys(login, csg, keys, answers);
            if (failure is { } f)
            {
                return LoginFail(itt, isid, f.Status, f.Reason);
            }

            // Leaving the security stage needs a finished authentication (12.1): CHAP when it is configured (for
            // normal sessions), otherwise AuthMethod=None, which an initiator that skips the stage gets implicitly.
            var chapRequired = _server.Options.Chap is not null && !login.Discovery;
            if (transit && !login.AuthDone)
            {
                if (!chapRequired)
                {
                    login.AuthDone = true;
                }
                else if (csg == 1 || login.Auth != AuthKind.Chap)
                {
                    return LoginFail(itt, isid, 0x0201, csg == 1
                        ? "CHAP is required but the initiator skipped the security stage"
                        : "CHAP is required");
                }
            }

            var canTransit = transit && login.AuthDone;
            if (!login.TargetPortalGroupTagSent && !login.Discovery && login.SessionTypeKnown)
            {
                answers.Add(new("TargetPortalGroupTag", "1"));
                login.TargetPortalGroupTagSent = true;
            }

            if (canTransit && nsg == 3)
            {
                if (login.InitiatorName is null)
                {
                    return LoginFail(itt, isid, 0x0207, "InitiatorName is missing");
                }

                if (!login.Discovery && login.Target is null)
                {
                    return LoginFail(itt, isid, 0x0207, "TargetName is missing");
                }

                _params.Settle();
                _tsih = _server.NextTsih();
                _discovery = login.Discovery;
                _target = login.Target;
                if (!_discovery)
                {
                    _nexus = new ScsiNexus(login.InitiatorName, isid);
                    _server.SessionStarted(_nexus, this, _target!);
                }

                var responseFlags = (byte)(0x80 | (csg << 2) | nsg);
                SendLoginResponse(itt, isid, _tsih, responseFlags, answers, 0);
                _fullFeature = true;
                IscsiLog.LoggedIn(_log, Remote, login.InitiatorName, _target?.Target.Iqn ?? "(discovery)", _tsih,
                    _discovery ? "discovery" : "normal", login.Auth == AuthKind.Chap ? (login.MutualDone ? "mutual CHAP" : "CHAP") : "None",
                    _params.HeaderDigest ? "CRC32C" : "None", _params.DataDigest ? "CRC32C" : "None");
                return true;
            }

            var flagsOut = (byte)((csg << 2) | (canTransit ? 0x80 | nsg : 0));
            SendLoginResponse(itt, isid, 0, flagsOut, answers, 0);
        }
    }

    private enum AuthKind { Unset, None, Chap }

    private sealed class LoginState
    {
        public bool Started;
        public ulong Isid;
        public string? InitiatorName;
        public bool Discovery;
        public bool SessionTypeKnown;
        public IscsiTargetState? Target;
        public AuthKind Auth;
        public bool AuthMethodOffered;
        public bool AuthDone;
        public bool MutualDone;
        public bool TargetPortalGroupTagSent;
        public int ChapStep;
        public byte ChapId;
        public byte[]? ChapChallenge;
    }

    private (int Status, string Reason)? ProcessLoginKeys(LoginState login, int csg, List<KeyValuePair<string, string>> keys, List<KeyValuePair<string, string>> answers)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, value) in keys)
        {
            if (!seen.Add(key))
            {
                return (0x0200, $"key {key} sent twice");
            }

            switch (key)
            {
                case "InitiatorName":
                    if (value.Length == 0)
                    {
                        return (0x0207, "empty InitiatorName");
                    }

                    login.InitiatorName = value;
                    break;
                case "InitiatorAlias":
                    break;
                case "SessionType":
                    if (value is not ("Normal" or "Discovery"))
                    {
                        return (0x0209, $"SessionType {value} is not supported");
                    }

                    login.Discovery = value == "Discovery";
                    login.SessionTypeKnown = true;
                    break;
                case "TargetName":
                    login.Target = _server.FindTarget(value);
                    if (login.Target is null)
                    {
                        return (0x0203, $"no target named '{value}'");
                    }

                    break;
                case "AuthMethod":
                    if (csg != 0)
                    {
                        answers.Add(new(key, "Irrelevant"));
                        break;
                    }

                    login.AuthMethodOffered = true;
                    var offered = value.Split(',');
                    var wantChap = _server.Options.Chap is not null && !login.Discovery;
                    if (wantChap && offered.Contains("CHAP"))
                    {
                        login.Auth = AuthKind.Chap;
                        login.ChapStep = 1;
                        answers.Add(new(key, "CHAP"));
                    }
                    else if (!wantChap && offered.Contains("None"))
                    {
                        login.Auth = AuthKind.None;
                        login.AuthDone = true;
                        answers.Add(new(key, "None"));
                    }
                    else
                    {
                        answers.Add(new(key, "Reject"));
                        return (0x0201, wantChap ? "CHAP is required but the initiator does not offer it" : $"AuthMethod {value}: only None is configured");
                    }

                    break;
                case "CHAP_A":
                    if (login.Auth != AuthKind.Chap || login.ChapStep != 1)
                    {
                        return (0x0201, "CHAP_A out of sequence");
                    }

                    if (!value.Split(',').Contains("5"))
                    {
                        answers.Add(new(key, "Reject"));
                        return (0x0201, "the initiator does not offer CHAP with MD5 (CHAP_A=5)");
                    }

                    login.ChapId = (byte)RandomNumberGenerator.GetInt32(256);
                    login.ChapChallenge = RandomNumberGenerator.GetBytes(16);
                    answers.Add(new("CHAP_A", "5"));
                    answers.Add(new("CHAP_I", login.ChapId.ToString(CultureInfo.InvariantCulture)));
                    answers.Add(new("CHAP_C", "0x" + Convert.ToHexStringLower(login.ChapChallenge)));
                    login.ChapStep = 2;
                    break;
                case "CHAP_N" or "CHAP_R" or "CHAP_I" or "CHAP_C":
                    break; // handled together below
                default:
                    if (csg == 0 && key.StartsWith("CHAP_", StringComparison.Ordinal))
                    {
                        return (0x0201, $"unexpected {key}");
                    }

                    var answer = _params.Answer(key, value);
                    if (answer is not null)
                    {
                        answers.Add(new(key, answer)); // digests, once agreed, start with the first full-feature PDU
                    }
                    else if (key == "MaxRecvDataSegmentLength")
                    {
                        answers.Add(new("MaxRecvDataSegmentLength", MaxRecvDataSegmentLength.ToString(CultureInfo.InvariantCulture)));
                    }
                    else if (key is "TargetAlias" or "TargetAddress" or "TargetPortalGroupTag")
                    {
                        return (0x0200, $"{key} may only be sent by a target");
                    }
                    else
                    {
                        answers.Add(new(key, "NotUnderstood"));
                    }

                    break;
            }
        }

        var dict = keys.ToDictionary(k => k.Key, k => k.Value, StringComparer.Ordinal);
        if (dict.ContainsKey("CHAP_N") || dict.ContainsKey("CHAP_R"))
        {
            var chapFailure = CheckChap(login, dict, answers);
            if (chapFailure is not null)
            {
                return (0x0201, chapFailure);
            }
        }

        if (!login.SessionTypeKnown && login.InitiatorName is not null)
        {
            login.SessionTypeKnown = true; // SessionType defaults to Normal (13.21)
        }

        return null;
    }

    /// <summary>
    /// Verifies the initiator's CHAP response (RFC 1994: MD5(id || secret || challenge)) and, when it sent its own
    /// challenge (mutual CHAP), answers it with the target's secret (RFC 7143 12.1.3).
    /// </summary>
    private string? CheckChap(LoginState login, Dictionary<string, string> keys, List<KeyValuePair<string, string>> answers)
    {
        var chap = _server.Options.Chap;
        if (chap is null || login.Auth != AuthKind.Chap || login.ChapStep != 2 || login.ChapChallenge is null)
        {
            return "CHAP_N/CHAP_R out of sequence";
        }

        if (!keys.TryGetValue("CHAP_N", out var name) || !keys.TryGetValue("CHAP_R", out var responseText))
        {
            return "CHAP_N and CHAP_R must come together";
        }

        var response = ParseChapBinary(responseText);
        var expected = ChapResponse(login.ChapId, chap.Secret, login.ChapChallenge);
        if (name != chap.User || response is null || !CryptographicOperations.FixedTimeEquals(response, expected))
        {
            return $"CHAP authentication of user '{name}' failed";
        }

        login.ChapStep = 3;
        if (keys.TryGetValue("CHAP_I", out var idText) || keys.ContainsKey("CHAP_C"))
        {
            var mutual = _server.Options.MutualChap;
            if (mutual is null)
            {
                return "the initiator asks for mutual CHAP, but no target secret is configured (--iscsi-mutual-chap)";
            }

            var challenge = keys.TryGetValue("CHAP_C", out var c) ? ParseChapBinary(c) : null;
            if (idText is null || !byte.TryParse(idText, NumberStyles.None, CultureInfo.InvariantCulture, out var id) || challenge is null || challenge.Length == 0)
            {
                return "mutual CHAP needs a valid CHAP_I and CHAP_C";
            }

            if (challenge.AsSpan().SequenceEqual(login.ChapChallenge))
            {
                return "the initiator's CHAP challenge repeats the target's (reflection attack)";
            }

            answers.Add(new("CHAP_N", mutual.User));
            answers.Add(new("CHAP_R", "0x" + Convert.ToHexStringLower(ChapResponse(id, mutual.Secret, challenge))));
            login.MutualDone = true;
        }

        login.AuthDone = true;
        return null;
    }

    internal static byte[] ChapResponse(byte id, string secret, byte[] challenge)
    {
        var secretBytes = Encoding.UTF8.GetBytes(secret);
        var input = new byte[1 + secretBytes.Length + challenge.Length];
        input[0] = id;
        secretBytes.CopyTo(input, 1);
        challenge.CopyTo(input, 1 + secretBytes.Length);
#pragma warning disable CA5351 // CHAP_A=5 is MD5 by definition (RFC 1994); it is what initiators implement
        return MD5.HashData(input);
#pragma warning restore CA5351
    }

    /// <summary>Binary values of CHAP keys: 0x hex or 0b base64 (RFC 7143 6.1).</summary>
    internal static byte[]? ParseChapBinary(string text)
    {
        try
        {
            if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            {
                var hex = text[2..];
                return Convert.FromHexString(hex.Length % 2 == 1 ? "0" + hex : hex);
            }

            if (text.StartsWith("0b", StringComparison.OrdinalIgnoreCase))
            {
                return Convert.FromBase64String(text[2..]);
            }
        }
        catch (FormatException)
        {
        }

        return null;
    }

    private void SendLoginResponse(uint itt, ulong isid, ushort tsih, byte flags, List<KeyValuePair<string, string>> answers, int status)
    {
        var bhs = NewBhs(OpLoginResponse, flags, itt);
        BinaryPrimitives.WriteUInt16BigEndian(bhs[8..], (ushort)(isid >> 32));
        WriteUInt32(bhs, 10, (uint)isid);
        BinaryPrimitives.WriteUInt16BigEndian(bhs[14..], tsih);
        bhs[36] = (byte)(status >> 8);
        bhs[37] = (byte)status;
        Send(bhs, IscsiTextKeys.Encode(answers));
    }

    private bool LoginFail(uint itt, ulong isid, int status, string reason)
    {
        IscsiLog.LoginRefused(_log, Remote, status, reason);
        SendLoginResponse(itt, isid, 0, 0, [], status);
        return false;
    }

    // ---------------------------------------------------------------- Full feature phase (RFC 7143 11)

    private bool HandleFullFeature(int dataLength)
    {
        var opcode = (byte)(_bhs[0] & 0x3f);
        var immediate = (_bhs[0] & ImmediateBit) != 0;
        if (_discovery && opcode is not (OpText or OpLogout or OpNopOut))
        {
            SendReject(RejectProtocolError, _bhs);
            return true;
        }

        switch (opcode)
        {
            case OpScsiCommand:
                ScsiCommand(dataLength, immediate);
                return true;
            case OpDataOut:
                DataOut(dataLength);
                return true;
            case OpNopOut:
                NopOut(dataLength, immediate);
                return true;
            case OpTaskManagement:
                TaskManagement(immediate);
                return true;
            case OpText:
                Text(dataLength, immediate);
                return true;
            case OpLogout:
                Logout(immediate);
                return false;
            case OpSnack:
                SendReject(RejectSnackReject, _bhs); // error recovery level 0: no SNACK
                return true;
            case OpLogin:
                SendReject(RejectProtocolError, _bhs);
                return true;
            default:
                IscsiLog.Rejected(_log, Remote, opcode);
                SendReject(RejectCommandNotSupported, _bhs);
                return true;
        }
    }

    /// <summary>
    /// Checks a non-immediate command's CmdSN against the window (4.2.2.1): one outside
    /// [ExpCmdSN, MaxCmdSN] is ignored silently. Returns false for such a command.
    /// </summary>
    private bool AcceptCmdSn(bool immediate, bool takesSlot)
    {
        var cmdSn = ReadUInt32(_bhs, 24);
        lock (_sendLock)
        {
            if (immediate)
            {
                return true;
            }

            if (SerialLess(cmdSn, _expCmdSn) || SerialLess(MaxCmdSn(), cmdSn))
            {
                return false;
            }

            _expCmdSn = cmdSn + 1;
            if (takesSlot)
            {
                _active++;
            }

            return true;
        }
    }

    private void ScsiCommand(int dataLength, bool immediate)
    {
        if (!AcceptCmdSn(immediate, takesSlot: !immediate))
        {
            return;
        }

        var flags = _bhs[1];
        var task = new PendingTask
        {
            Itt = ReadUInt32(_bhs, 16),
            Lun = BinaryPrimitives.ReadUInt64BigEndian(_bhs.AsSpan(8)),
            Cdb = _bhs.AsSpan(32, 16).ToArray(),
            Edtl = (int)Math.Min(ReadUInt32(_bhs, 20), int.MaxValue),
            Read = (flags & 0x40) != 0,
            Immediate = immediate,
        };
        var write = (flags & 0x20) != 0;
        if (dataLength > 0 && (!write || !_params.ImmediateData || dataLength > _params.FirstBurstLength || dataLength > task.Edtl))
        {
            IscsiProtocolException.Throw($"SCSI command with {dataLength} bytes of immediate data (EDTL {task.Edtl}, W {write}, FirstBurstLength {_params.FirstBurstLength})");
        }

        if (!write || task.Edtl == 0)
        {
            Execute(task);
            return;
        }

        var cap = ((long)ScsiLogicalUnit.MaxTransferBlocks << ScsiLogicalUnit.BlockShift) * 2;
        if (task.Edtl > cap || Interlocked.Read(ref _bufferedBytes) + task.Edtl > MaxBufferedWriteBytes)
        {
            // Too big to buffer: answer now. Data-Out the initiator still sends for it is dropped (unknown task).
            var result = task.Edtl > cap
                ? ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb)
                : ScsiResult.WithStatus(ScsiSense.StatusTaskSetFull);
            SendResult(task, result, expectedDataOut: null);
            return;
        }

        task.Buffer = ArrayPool<byte>.Shared.Rent(task.Edtl);
        Interlocked.Add(ref _bufferedBytes, task.Edtl);
        _data.AsSpan(0, dataLength).CopyTo(task.Buffer);
        task.Received = dataLength;
        // Unsolicited data (immediate plus Data-Out without R2T) is allowed up to FirstBurstLength when InitialR2T=No.
        task.UnsolicitedLimit = _params.InitialR2T ? dataLength : Math.Min(_params.FirstBurstLength, task.Edtl);
        if ((flags & FinalBit) != 0)
        {
            task.UnsolicitedLimit = dataLength; // F: no unsolicited Data-Out follows
        }

        lock (_sendLock)
        {
            if (_pending.ContainsKey(task.Itt))
            {
                IscsiProtocolException.Throw($"initiator task tag 0x{task.Itt:x8} is already in use");
            }

            _pending[task.Itt] = task;
        }

        ContinueWrite(task);
    }

    /// <summary>Runs a write once all its data is here, or asks for the next burst with an R2T (one outstanding: MaxOutstandingR2T=1).</summary>
    private void ContinueWrite(PendingTask task)
    {
        if (task.Received >= task.Edtl)
        {
            lock (_sendLock)
            {
                _pending.Remove(task.Itt);
            }

            Execute(task);
            return;
        }

        if (task.Received < task.UnsolicitedLimit)
        {
            return; // unsolicited Data-Out still to come
        }

        var length = Math.Min(_params.MaxBurstLength, task.Edtl - task.Received);
        task.Ttt = _nextTtt++;
        if (task.Ttt == ReservedTag)
        {
            task.Ttt = _nextTtt++;
        }

        task.BurstEnd = task.Received + length;
        task.ExpectedDataSn = 0;
        var bhs = NewBhs(OpR2T, FinalBit, task.Itt);
        BinaryPrimitives.WriteUInt64BigEndian(bhs[8..], task.Lun);
        WriteUInt32(bhs, 20, task.Ttt);
        WriteUInt32(bhs, 36, task.R2TSn++);
        WriteUInt32(bhs, 40, (uint)task.Received);
        WriteUInt32(bhs, 44, (uint)length);
        Send(bhs, [], advanceStatSn: false);
    }

    private void DataOut(int dataLength)
    {
        var itt = ReadUInt32(_bhs, 16);
        var ttt = ReadUInt32(_bhs, 20);
        var dataSn = ReadUInt32(_bhs, 36);
        var offset = ReadUInt32(_bhs, 40);
        var final = (_bhs[1] & FinalBit) != 0;
        PendingTask? task;
        lock (_sendLock)
        {
            _pending.TryGetValue(itt, out task);
        }

        if (task is null)
        {
            // Data of a command already answered (refused before its data arrived, failed on an earlier Data-Out,
            // or aborted): dropped.
            return;
        }

        // DataPDUInOrder=Yes, DataSequenceInOrder=Yes: data arrives at increasing offsets and DataSN counts the
        // PDUs of each sequence from 0 (11.7.5). A PDU out of sequence fails its command, not the connection.
        var limit = ttt == ReservedTag ? task.UnsolicitedLimit : task.BurstEnd;
        string? error = null;
        if (ttt != task.Ttt)
        {
            error = $"target transfer tag 0x{ttt:x8}, expected 0x{task.Ttt:x8}";
        }
        else if (dataSn != task.ExpectedDataSn)
        {
            error = $"DataSN {dataSn}, expected {task.ExpectedDataSn}";
        }
        else if (offset != task.Received || offset + (uint)dataLength > (uint)limit)
        {
            error = $"data at {offset}+{dataLength}, expected offset {task.Received} and at most up to {limit}";
        }

        if (error is not null)
        {
            IscsiLog.DataOutRejected(_log, Remote, itt, error);
            lock (_sendLock)
            {
                _pending.Remove(itt);
            }

            SendResult(task, ScsiResult.Check(ScsiSense.KeyAbortedCommand, ScsiSense.DataPhaseError), expectedDataOut: null);
            return;
        }

        task.ExpectedDataSn++;
        _data.AsSpan(0, dataLength).CopyTo(task.Buffer.AsSpan(task.Received));
        task.Received += dataLength;
        if (!final)
        {
            return;
        }

        if (ttt == ReservedTag)
        {
            task.UnsolicitedLimit = task.Received; // the unsolicited sequence ended
            task.ExpectedDataSn = 0;
        }
        else if (task.Received != task.BurstEnd)
        {
            IscsiProtocolException.Throw($"Data-Out sequence for task 0x{itt:x8} ended at {task.Received}, the R2T asked up to {task.BurstEnd}");
        }

        ContinueWrite(task);
    }

    private void Execute(PendingTask task)
    {
        if (_target is null)
        {
            SendResult(task, ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.LogicalUnitNotSupported), null);
            return;
        }

        var pending = _target.Unit.Execute(_nexus!, task.Lun, task.Cdb, task.Buffer, task.Buffer is null ? 0 : task.Received);
        var expectedOut = ScsiCdb.DataOutLength(task.Cdb);
        if (pending.IsCompleted)
        {
            SendResult(task, pending.Result, expectedOut);
        }
        else
        {
            lock (_sendLock)
            {
                _running[task.Itt] = task;
            }

            _ = CompleteLater(pending, task, expectedOut);
        }
    }

    private async Task CompleteLater(ValueTask<ScsiResult> pending, PendingTask task, long? expectedOut)
    {
        ScsiResult result;
        try
        {
            result = await pending.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException)
        {
            result = ScsiResult.Check(ScsiSense.KeyHardwareError, 0x0800);
        }

        lock (_sendLock)
        {
            _running.Remove(task.Itt);
        }

        try
        {
            SendResult(task, result, expectedOut);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or IOException)
        {
            Stop(); // the connection is gone; its thread ends
        }
    }

    /// <summary>
    /// Sends a command's outcome (11.4, 11.7): Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength,
    /// the status folded into the last one when it is GOOD; otherwise a SCSI Response with sense data. Residual
    /// counts compare what the command moves with the expected data transfer length.
    /// </summary>
    private void SendResult(PendingTask task, ScsiResult result, long? expectedDataOut)
    {
        try
        {
            ReturnBuffer(task);
            var completed = task.Immediate ? 0 : 1;
            if (task.Aborted)
            {
                lock (_sendLock)
                {
                    _active -= completed; // ABORT TASK answered for it: no response (11.5.1)
                }

                return;
            }

            var edtl = task.Edtl;
            byte residualFlags = 0;
            uint residual = 0;
            var inLength = task.Read ? Math.Min(result.DataLength, edtl) : 0;
            if (result.Status == ScsiSense.StatusGood && task.Read)
            {
                if (result.DataLength < edtl)
                {
                    residualFlags = 0x02; // U
                    residual = (uint)(edtl - result.DataLength);
                }
                else if (result.DataLength > edtl)
                {
                    residualFlags = 0x04; // O
                    residual = (uint)(result.DataLength - edtl);
                }
            }
            else if (!task.Read && expectedDataOut is { } need && result.Status != ScsiSense.StatusReservationConflict)
            {
                if (need < edtl)
                {
                    residualFlags = 0x02;
                    residual = (uint)(edtl - need);
                }
                else if (need > edtl)
                {
                    residualFlags = 0x04;
                    residual = (uint)(need - edtl);
                }
            }
            else if (task.Read && edtl > 0 && result.Status != ScsiSense.StatusGood)
            {
                residualFlags = 0x02;
                residual = (uint)edtl;
            }

            if (inLength > 0 && result.Status == ScsiSense.StatusGood)
            {
                var segment = _params.MaxSendDataSegmentLength;
                uint dataSn = 0;
                for (var offset = 0; offset < inLength; offset += segment)
                {
                    var n = Math.Min(segment, inLength - offset);
                    var last = offset + n >= inLength;
                    var bhs = NewBhs(OpDataIn, 0, task.Itt);
                    if (last)
                    {
                        bhs[1] = (byte)(FinalBit | 0x01 | residualFlags); // F, S, residual flags
                        bhs[3] = result.Status;
                        WriteUInt32(bhs, 44, residual);
                    }
                    else if ((offset + n) % _params.MaxBurstLength == 0)
                    {
                        bhs[1] = FinalBit; // end of a sequence (at most MaxBurstLength)
                    }

                    BinaryPrimitives.WriteUInt64BigEndian(bhs[8..], task.Lun);
                    WriteUInt32(bhs, 20, ReservedTag);
                    WriteUInt32(bhs, 36, dataSn++);
                    WriteUInt32(bhs, 40, (uint)offset);
                    Send(bhs, result.Data.AsSpan(offset, n), setStatSn: last, advanceStatSn: last, completed: last ? completed : 0);
                }

                return;
            }

            var response = NewBhs(OpScsiResponse, (byte)(FinalBit | residualFlags), task.Itt);
            response[3] = result.Status;
            WriteUInt32(response, 44, residual);
            byte[] sense = [];
            if (result.Sense is { } s)
            {
                sense = new byte[2 + s.Length];
                BinaryPrimitives.WriteUInt16BigEndian(sense, (ushort)s.Length);
                s.CopyTo(sense, 2);
            }

            Send(response, sense, completed: completed);
        }
        finally
        {
            result.Release();
        }
    }

    private void ReturnBuffer(PendingTask task)
    {
        if (task.Buffer is { } buffer)
        {
            task.Buffer = null;
            Interlocked.Add(ref _bufferedBytes, -task.Edtl);
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void NopOut(int dataLength, bool immediate)
    {
        var itt = ReadUInt32(_bhs, 16);
        if (itt == ReservedTag)
        {
            return; // the answer to a NOP-In ping (11.18), or a lone ping that wants no reply
        }

        if (!AcceptCmdSn(immediate, takesSlot: false))
        {
            return;
        }

        var bhs = NewBhs(OpNopIn, FinalBit, itt);
        _bhs.AsSpan(8, 8).CopyTo(bhs[8..]);
        WriteUInt32(bhs, 20, ReservedTag);
        Send(bhs, _data.AsSpan(0, Math.Min(dataLength, _params.MaxSendDataSegmentLength)));
    }

    private void TaskManagement(bool immediate)
    {
        AcceptCmdSn(immediate, takesSlot: false);
        var function = _bhs[1] & 0x7f;
        var lun = BinaryPrimitives.ReadUInt64BigEndian(_bhs.AsSpan(8));
        var itt = ReadUInt32(_bhs, 16);
        var referenced = ReadUInt32(_bhs, 20);
        byte response;
        switch (function)
        {
            case 1: // ABORT TASK: "task does not exist" when it already completed (its response was sent)
                response = lun != 0 ? (byte)2 : AbortTasks(t => t.Itt == referenced) > 0 ? (byte)0 : (byte)1;

                break;
            case 2: // ABORT TASK SET
            case 4: // CLEAR TASK SET
                response = lun != 0 ? (byte)2 : (byte)0;
                if (lun == 0)
                {
                    AbortTasks(_ => true);
                }

                break;
            case 5: // LOGICAL UNIT RESET
                response = lun != 0 ? (byte)2 : (byte)0;
                if (lun == 0)
                {
                    AbortTasks(_ => true);
                    IscsiServer.ResetUnit(_target!);
                }

                break;
            case 6: // TARGET WARM RESET
            case 7: // TARGET COLD RESET
                AbortTasks(_ => true);
                IscsiServer.ResetUnit(_target!);
                response = 0;
                break;
            case 8: // TASK REASSIGN: needs error recovery level 2
                response = 4;
                break;
            default: // CLEAR ACA and anything else
                response = 5;
                break;
        }

        IscsiLog.TaskManagement(_log, Remote, function, lun, referenced, response);
        var bhs = NewBhs(OpTaskManagementResponse, FinalBit, itt);
        bhs[2] = response;
        Send(bhs, []);
        if (function == 7 && response == 0)
        {
            Stop(); // a cold reset drops every connection (RFC 7143 11.5.1)
        }
    }

    /// <summary>Aborts tasks still waiting for Data-Out (they get no response) and marks running ones so theirs is dropped.</summary>
    private int AbortTasks(Func<PendingTask, bool> match)
    {
        List<PendingTask> aborted;
        var running = 0;
        lock (_sendLock)
        {
            aborted = [.. _pending.Values.Where(match)];
            foreach (var task in aborted)
            {
                _pending.Remove(task.Itt);
                if (!task.Immediate)
                {
                    _active--;
                }
            }

            foreach (var task in _running.Values.Where(match))
            {
                task.Aborted = true;
                running++;
            }
        }

        foreach (var task in aborted)
        {
            ReturnBuffer(task);
        }

        return aborted.Count + running;
    }

    private void Text(int dataLength, bool immediate)
    {
        if (!AcceptCmdSn(immediate, takesSlot: false))
        {
            return;
        }

        var itt = ReadUInt32(_bhs, 16);
        List<KeyValuePair<string, string>> keys;
        try
        {
            keys = IscsiTextKeys.Parse(_data.AsSpan(0, dataLength));
        }
        catch (IscsiProtocolException)
        {
            SendReject(RejectProtocolError, _bhs);
            return;
        }

        var answers = new List<KeyValuePair<string, string>>();
        foreach (var (key, value) in keys)
        {
            if (key == "SendTargets")
            {
                // 12.3 / Appendix C: All in a discovery session; in a normal session, the current target (or the named one).
                foreach (var target in _server.Targets)
                {
                    var wanted = value == "All" ? _discovery : (value.Length == 0 ? target == _target : value == target.Target.Iqn);
                    if (!wanted)
                    {
                        continue;
                    }

                    answers.Add(new("TargetName", target.Target.Iqn));
                    answers.Add(new("TargetAddress", $"{_server.PortalFor(_socket)},1"));
                }
            }
            else
            {
                answers.Add(new(key, "NotUnderstood"));
            }
        }

        var data = IscsiTextKeys.Encode(answers);
        if (data.Length > _params.MaxSendDataSegmentLength)
        {
            data = data[.._params.MaxSendDataSegmentLength]; // one target per volume: never this long in practice
        }

        var bhs = NewBhs(OpTextResponse, FinalBit, itt);
        WriteUInt32(bhs, 20, ReservedTag);
        Send(bhs, data);
    }

    private void Logout(bool immediate)
    {
        AcceptCmdSn(immediate, takesSlot: false);
        var itt = ReadUInt32(_bhs, 16);
        var bhs = NewBhs(OpLogoutResponse, FinalBit, itt);
        bhs[2] = 0; // connection or session closed successfully
        BinaryPrimitives.WriteUInt16BigEndian(bhs[40..], 2); // Time2Wait
        BinaryPrimitives.WriteUInt16BigEndian(bhs[42..], 20); // Time2Retain
        Send(bhs, []);
        IscsiLog.LoggedOut(_log, Remote, _tsih);
    }
}
