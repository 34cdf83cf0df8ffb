using System.Buffers.Binary;
using System.Text;

namespace BlockRepl.Nbd;

/// <summary>What the option haggling agreed on.</summary>
internal sealed record NbdSession(NbdExport Export, bool StructuredReplies, bool BaseAllocation);

/// <summary>
/// The fixed-newstyle handshake (proto.md "Fixed newstyle negotiation"):
/// <code>
///  S: 64 bits, 0x4e42444d41474943 (ASCII 'NBDMAGIC')
///  S: 64 bits, 0x49484156454F5054 (ASCII 'IHAVEOPT')
///  S: 16 bits, handshake flags (FIXED_NEWSTYLE | NO_ZEROES)
///  C: 32 bits, client flags
///  then option requests until NBD_OPT_EXPORT_NAME or a successful NBD_OPT_GO
/// </code>
/// Every option's payload is consumed in full before it is answered, so an option we refuse never
/// desynchronises the stream.
/// </summary>
internal sealed class NbdHandshake
{
    /// <summary>Largest option payload we buffer; larger ones are skipped and answered ERR_TOO_BIG.</summary>
    public const int MaxOptionLength = 64 * 1024;

    /// <summary>A client that haggles longer than this is not a client.</summary>
    public const int MaxOptions = 1024;

    private readonly NbdReceiveBuffer _rx;
    private readonly NbdReplySender _tx;
    private readonly IReadOnlyDictionary<string, NbdExport> _exports;
    private bool _noZeroes;
    private bool _structured;
    private bool _baseAllocation;
    private string? _contextExport;

    public NbdHandshake(NbdReceiveBuffer rx, NbdReplySender tx, IReadOnlyDictionary<string, NbdExport> exports)
    {
        _rx = rx;
        _tx = tx;
        _exports = exports;
    }

    /// <summary>Set when the handshake ends without a session, for the log.</summary>
    public string? EndReason { get; private set; }

    /// <summary>Runs the handshake; null when the client aborted, disconnected or was refused.</summary>
    public NbdSession? Run()
    {
        lock (_tx.Gate)
        {
            var greeting = _tx.Reserve(18);
            BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdProtocol.NbdMagic);
            BinaryPrimitives.WriteUInt64BigEndian(greeting[8..], NbdProtocol.OptionMagic);
            BinaryPrimitives.WriteUInt16BigEndian(greeting[16..], NbdProtocol.HandshakeFixedNewstyle | NbdProtocol.HandshakeNoZeroes);
            _tx.Commit(18);
            _tx.FlushLocked();
        }

        if (!_rx.Fill(4))
        {
            return End("client closed before sending its flags");
        }

        var clientFlags = BinaryPrimitives.ReadUInt32BigEndian(_rx.Available);
        _rx.Consume(4);
        if ((clientFlags & ~(NbdProtocol.ClientFixedNewstyle | NbdProtocol.ClientNoZeroes)) != 0)
        {
            return End($"unknown client flags 0x{clientFlags:x}");
        }

        if ((clientFlags & NbdProtocol.ClientFixedNewstyle) == 0)
        {
            return End("client does not speak fixed newstyle");
        }

        _noZeroes = (clientFlags & NbdProtocol.ClientNoZeroes) != 0;

        for (var i = 0; i < MaxOptions; i++)
        {
            if (!_rx.Fill(NbdProtocol.OptionHeaderSize))
            {
                return End("client closed during option haggling");
            }

            NbdOptionHeader.TryRead(_rx.Available, out var option);
            _rx.Consume(NbdProtocol.OptionHeaderSize);
            if (option.Length > MaxOptionLength)
            {
                if (option.Option == NbdProtocol.OptExportName || !_rx.Skip(option.Length))
                {
                    return End($"option {option.Option} with a {option.Length}-byte payload");
                }

                Reply(option.Option, NbdProtocol.RepErrTooBig, "option payload too large");
                continue;
            }

            var length = (int)option.Length;
            if (!_rx.Fill(length))
            {
                return End("client closed inside an option");
            }

            var data = _rx.Available[..length];
            var session = Handle(option.Option, data, out var stop);
            _rx.Consume(length);
            _tx.Flush();
            if (session is not null || stop)
            {
                return session;
            }
        }

        return End($"more than {MaxOptions} options");
    }

    private NbdSession? Handle(uint option, ReadOnlySpan<byte> data, out bool stop)
    {
        stop = false;
        switch (option)
        {
            case NbdProtocol.OptExportName:
                return ExportName(data, out stop);

            case NbdProtocol.OptAbort:
                Reply(option, NbdProtocol.RepAck);
                stop = true;
                EndReason = "client aborted";
                return null;

            case NbdProtocol.OptList:
                List(data);
                return null;

            case NbdProtocol.OptInfo:
            case NbdProtocol.OptGo:
                return InfoOrGo(option, data);

            case NbdProtocol.OptStructuredReply:
                if (!data.IsEmpty)
                {
                    Reply(option, NbdProtocol.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
                }
                else
                {
                    _structured = true;
                    Reply(option, NbdProtocol.RepAck);
                }

                return null;

            case NbdProtocol.OptListMetaContext:
            case NbdProtocol.OptSetMetaContext:
                MetaContext(option, data);
                return null;

            default:
                // Includes NBD_OPT_STARTTLS: we do not offer TLS, and the spec's answer to that is ERR_UNSUP.
                Reply(option, NbdProtocol.RepErrUnsup, $"option {option} is not supported");
                return null;
        }
    }

    private NbdSession? ExportName(ReadOnlySpan<byte> data, out bool stop)
    {
        // No error reply exists for NBD_OPT_EXPORT_NAME: an unknown name ends the connection.
        stop = true;
        if (!TryDecode(data, out var name) || !TryFindExport(name, out var export))
        {
            EndReason = $"unknown export '{Printable(data)}' requested with NBD_OPT_EXPORT_NAME";
            return null;
        }

        lock (_tx.Gate)
        {
            var span = _tx.Reserve(10 + 124);
            BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)export.Volume.Size);
            BinaryPrimitives.WriteUInt16BigEndian(span[8..], export.TransmissionFlags(_structured));
            var n = 10;
            if (!_noZeroes)
            {
                span.Slice(10, 124).Clear();
                n += 124;
            }

            _tx.Commit(n);
        }

        return Session(export);
    }

    /// <summary>
    /// NBD_OPT_INFO / NBD_OPT_GO data:
    /// <code>
    ///  32 bits, length of name (unsigned); MUST be no larger than the option data length - 6
    ///  String: name of the export
    ///  16 bits, number of information requests
    ///  16 bits x n - list of NBD_INFO information requests
    /// </code>
    /// </summary>
    private NbdSession? InfoOrGo(uint option, ReadOnlySpan<byte> data)
    {
        if (data.Length < 6)
        {
            Reply(option, NbdProtocol.RepErrInvalid, "option data too short");
            return null;
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6))
        {
            Reply(option, NbdProtocol.RepErrInvalid, "export name length exceeds option data");
            return null;
        }

        var nameBytes = data.Slice(4, (int)nameLength);
        var rest = data[(4 + (int)nameLength)..];
        var requests = BinaryPrimitives.ReadUInt16BigEndian(rest);
        if (rest.Length != 2 + (2 * requests))
        {
            Reply(option, NbdProtocol.RepErrInvalid, "information request count does not match option length");
            return null;
        }

        if (!TryDecode(nameBytes, out var name))
        {
            Reply(option, NbdProtocol.RepErrInvalid, "export name is not valid UTF-8 or too long");
            return null;
        }

        if (!TryFindExport(name, out var export))
        {
            Reply(option, NbdProtocol.RepErrUnknown, _exports.Count > 1 && name.Length == 0
                ? "this server has several exports: name one"
                : $"no export named '{name}'");
            return null;
        }

        bool wantName = false, wantDescription = false;
        for (var i = 0; i < requests; i++)
        {
            switch (BinaryPrimitives.ReadUInt16BigEndian(rest[(2 + (2 * i))..]))
            {
                case NbdProtocol.InfoName:
                    wantName = true;
                    break;
                case NbdProtocol.InfoDescription:
                    wantDescription = true;
                    break;
                default:
                    break; // EXPORT and BLOCK_SIZE are always sent; unknown requests are ignored, as the spec asks.
            }
        }

        lock (_tx.Gate)
        {
            if (wantName)
            {
                InfoString(option, NbdProtocol.InfoName, export.Name);
            }

            if (wantDescription)
            {
                InfoString(option, NbdProtocol.InfoDescription, export.Description);
            }

            var span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + 14);
            var n = NbdReplyEncoder.OptionReplyHeader(span, option, NbdProtocol.RepInfo, 14);
            n += NbdReplyEncoder.InfoBlockSize(span[n..], 1, NbdProtocol.PreferredBlockSize, NbdProtocol.MaxPayload);
            _tx.Commit(n);

            span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + 12);
            n = NbdReplyEncoder.OptionReplyHeader(span, option, NbdProtocol.RepInfo, 12);
            n += NbdReplyEncoder.InfoExport(span[n..], (ulong)export.Volume.Size, export.TransmissionFlags(_structured));
            _tx.Commit(n);
        }

        Reply(option, NbdProtocol.RepAck);
        return option == NbdProtocol.OptGo ? Session(export) : null;
    }

    private void List(ReadOnlySpan<byte> data)
    {
        if (!data.IsEmpty)
        {
            Reply(NbdProtocol.OptList, NbdProtocol.RepErrInvalid, "NBD_OPT_LIST takes no data");
            return;
        }

        lock (_tx.Gate)
        {
            foreach (var export in _exports.Values.OrderBy(e => e.Name, StringComparer.Ordinal))
            {
                // NBD_REP_SERVER: 32 bits name length, name, then the rest of the reply is a description.
                var name = Encoding.UTF8.GetBytes(export.Name);
                var description = Encoding.UTF8.GetBytes(export.Description);
                var length = 4 + name.Length + description.Length;
                var span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + length);
                var n = NbdReplyEncoder.OptionReplyHeader(span, NbdProtocol.OptList, NbdProtocol.RepServer, (uint)length);
                BinaryPrimitives.WriteUInt32BigEndian(span[n..], (uint)name.Length);
                name.CopyTo(span[(n + 4)..]);
                description.CopyTo(span[(n + 4 + name.Length)..]);
                _tx.Commit(NbdProtocol.OptionReplyHeaderSize + length);
            }
        }

        Reply(NbdProtocol.OptList, NbdProtocol.RepAck);
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data:
    /// <code>
    ///  32 bits, length of export name; String, name of export
    ///  32 bits, number of queries
    ///  32 bits, length of query; String, query   (repeated)
    /// </code>
    /// </summary>
    private void MetaContext(uint option, ReadOnlySpan<byte> data)
    {
        var set = option == NbdProtocol.OptSetMetaContext;
        if (set && !_structured)
        {
            Reply(option, NbdProtocol.RepErrInvalid, "negotiate structured replies before NBD_OPT_SET_META_CONTEXT");
            return;
        }

        if (!TryParseMetaContext(data, out var exportName, out var queries, out var error))
        {
            Reply(option, NbdProtocol.RepErrInvalid, error);
            return;
        }

        if (!TryFindExport(exportName, out var export))
        {
            Reply(option, NbdProtocol.RepErrUnknown, $"no export named '{exportName}'");
            return;
        }

        var match = set
            ? queries.Contains(NbdProtocol.BaseAllocation)
            : queries.Count == 0 || queries.Exists(q => q is "base:" or NbdProtocol.BaseAllocation);
        if (set)
        {
            // SET replaces whatever an earlier SET selected.
            _baseAllocation = match;
            _contextExport = match ? export.Name : null;
        }

        if (match)
        {
            var name = Encoding.UTF8.GetBytes(NbdProtocol.BaseAllocation);
            lock (_tx.Gate)
            {
                var span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + 4 + name.Length);
                var n = NbdReplyEncoder.OptionReplyHeader(span, option, NbdProtocol.RepMetaContext, (uint)(4 + name.Length));
                BinaryPrimitives.WriteUInt32BigEndian(span[n..], set ? NbdProtocol.BaseAllocationContextId : 0);
                name.CopyTo(span[(n + 4)..]);
                _tx.Commit(n + 4 + name.Length);
            }
        }

        Reply(option, NbdProtocol.RepAck);
    }

    internal static bool TryParseMetaContext(ReadOnlySpan<byte> data, out string exportName, out List<string> queries, out string error)
    {
        exportName = string.Empty;
        queries = [];
        error = string.Empty;
        if (data.Length < 8)
        {
            error = "option data too short";
            return false;
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 8))
        {
            error = "export name length exceeds option data";
            return false;
        }

        if (!TryDecode(data.Slice(4, (int)nameLength), out exportName))
        {
            error = "export name is not valid UTF-8 or too long";
            return false;
        }

        var rest = data[(4 + (int)nameLength)..];
        var count = BinaryPrimitives.ReadUInt32BigEndian(rest);
        rest = rest[4..];
        for (var i = 0u; i < count; i++)
        {
            if (rest.Length < 4)
            {
                error = "query count exceeds option data";
                return false;
            }

            var queryLength = BinaryPrimitives.ReadUInt32BigEndian(rest);
            if (queryLength > (uint)(rest.Length - 4))
            {
                error = "query length exceeds option data";
                return false;
            }

            if (!TryDecode(rest.Slice(4, (int)queryLength), out var query))
            {
                error = "query is not valid UTF-8 or too long";
                return false;
            }

            queries.Add(query);
            rest = rest[(4 + (int)queryLength)..];
        }

        if (!rest.IsEmpty)
        {
            error = "trailing bytes after the last query";
            return false;
        }

        return true;
    }

    private NbdSession Session(NbdExport export) =>
        new(export, _structured, _baseAllocation && _contextExport == export.Name);

    private bool TryFindExport(string name, out NbdExport export)
    {
        if (name.Length == 0 && _exports.Count == 1)
        {
            export = _exports.Values.First();
            return true;
        }

        return _exports.TryGetValue(name, out export!);
    }

    private void InfoString(uint option, ushort infoType, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        var span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + 2 + bytes.Length);
        var n = NbdReplyEncoder.OptionReplyHeader(span, option, NbdProtocol.RepInfo, (uint)(2 + bytes.Length));
        BinaryPrimitives.WriteUInt16BigEndian(span[n..], infoType);
        bytes.CopyTo(span[(n + 2)..]);
        _tx.Commit(n + 2 + bytes.Length);
    }

    private void Reply(uint option, uint type, string? message = null)
    {
        var text = message is null ? [] : Encoding.UTF8.GetBytes(message);
        lock (_tx.Gate)
        {
            var span = _tx.Reserve(NbdProtocol.OptionReplyHeaderSize + text.Length);
            var n = NbdReplyEncoder.OptionReplyHeader(span, option, type, (uint)text.Length);
            text.CopyTo(span[n..]);
            _tx.Commit(n + text.Length);
        }
    }

    private NbdSession? End(string reason)
    {
        EndReason = reason;
        return null;
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    internal static bool TryDecode(ReadOnlySpan<byte> bytes, out string value)
    {
        value = string.Empty;
        if (bytes.Length > NbdProtocol.MaxStringLength || bytes.Contains((byte)0))
        {
            return false;
        }

        try
        {
            value = StrictUtf8.GetString(bytes);
            return true;
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
    }

    private static string Printable(ReadOnlySpan<byte> bytes)
    {
        var s = Encoding.UTF8.GetString(bytes[..Math.Min(bytes.Length, 64)]);
        return new string([.. s.Select(c => char.IsControl(c) ? '?' : c)]);
    }
}
